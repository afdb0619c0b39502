// Copyright the sse authors. MIT license.
// The benchmark scripts' options: read by `node:util`'s `parseArgs`, strict
// (an unknown option, a missing value or a stray positional is refused with
// one line naming it, exit status 2, as the `sse` command does), and the
// checks that several scripts make on a value.

import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import { argumentError } from "../_args.ts";

/**
 * The values of the declared options in `args`, or exits with status 2 and
 * one line on stderr naming the argument that is not one of them.
 *
 * @param options The options, as `parseArgs` takes them.
 * @param args The arguments, by default the script's.
 * @returns Each option's value, `undefined` when it was not given.
 */
export function readArgs<const T extends ParseArgsOptionsConfig>(
  options: T,
  args: string[] = Deno.args,
) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false })
      .values;
  } catch (error) {
    console.error(argumentError(error));
    Deno.exit(2);
  }
}

/** How {@linkcode positive} checks a value and words its error. */
export interface PositiveOptions {
  /**
   * Only a safe integer will do.
   *
   * @default {true}
   */
  integer?: boolean;
  /**
   * The error says "expected a positive integer, got" before the value.
   *
   * @default {false}
   */
  explain?: boolean;
}

/**
 * The value of `--name` as a positive number, `fallback` when not given.
 *
 * @param text The option's value, `undefined` when not given.
 * @param name The option's name, without the dashes.
 * @param fallback The default.
 * @param options How to check the value.
 * @returns The number.
 * @throws {RangeError} `Invalid --name: ...` when the value is not one.
 */
export function positive(
  text: string | undefined,
  name: string,
  fallback: number,
  options: PositiveOptions = {},
): number {
  if (text === undefined) return fallback;
  const { integer = true, explain = false } = options;
  const value = Number(text);
  if (integer ? !Number.isSafeInteger(value) || value < 1 : !(value > 0)) {
    throw new RangeError(
      `Invalid --${name}: ${
        explain ? "expected a positive integer, got " : ""
      }${text}`,
    );
  }
  return value;
}

/**
 * The keys listed in `--only` (comma-separated), each one of `keys`.
 *
 * @param text The value of `--only`, `undefined` when not given.
 * @param keys The keys there are.
 * @param noun What a key names, for the error ("workload").
 * @returns The keys listed, `undefined` when `--only` was not given.
 * @throws {TypeError} `Invalid --only: unknown <noun> "x" (one of ...)` for a
 * key that is none of `keys`.
 */
export function only(
  text: string | undefined,
  keys: readonly string[],
  noun: string,
): string[] | undefined {
  if (text === undefined) return undefined;
  const chosen = text.split(",");
  for (const key of chosen) {
    if (!keys.includes(key)) {
      throw new TypeError(
        `Invalid --only: unknown ${noun} ${JSON.stringify(key)} (one of ${
          keys.join(", ")
        })`,
      );
    }
  }
  return chosen;
}
