// Copyright the sse authors. MIT license.
// A screenshot of the running demo in headless Chromium, after it has signed
// in and had a snapshot, a chat message, a token stream and a channel restart
// (resume):
//
//   deno task demo &
//   deno run -A demo/screenshot.ts [http://127.0.0.1:8000/] [demo/screenshot.png]

import { chromium } from "playwright-core";

/** Where Chromium is on this machine, and how it must start. */
export const CHROMIUM = "/usr/bin/chromium";
/** Flags for a quiet headless Chromium that reaches nothing but 127.0.0.1. */
export const CHROMIUM_ARGS: string[] = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

async function main(): Promise<void> {
  const url = Deno.args[0] ?? "http://127.0.0.1:8000/";
  const output = Deno.args[1] ?? "demo/screenshot.png";
  const profile = await Deno.makeTempDir({ prefix: "sse-demo-chromium-" });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    headless: true,
    viewport: { width: 1280, height: 900 },
  });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    await page.goto(url);
    await page.fill("#signin-name", "ada");
    await page.click("#signin-form button[type=submit]");
    await page.waitForFunction(
      `document.querySelector("#session")?.textContent?.startsWith("snapshot")`,
    );
    await page.waitForFunction(
      `document.querySelector("#online")?.textContent?.includes("ada")`,
    );
    await page.fill("#text", "Hello from headless Chromium");
    await page.click("#chat-form button[type=submit]");
    await page.waitForFunction(
      `document.querySelector("#messages")?.textContent?.includes("headless Chromium")`,
    );
    await page.click("#complete-form button[type=submit]");
    await page.waitForFunction(
      `document.querySelector("#answer-info")?.textContent?.includes("tokens in")`,
    );
    await page.click("#restart");
    await page.waitForFunction(
      `document.querySelector("#session")?.textContent?.startsWith("resumed")`,
    );
    // A few ticks after the resume, to show they continue without a gap.
    await page.waitForTimeout(2500);
    await page.screenshot({ path: output, fullPage: true });
    console.log(`Screenshot: ${output}`);
  } finally {
    await context.close();
    await Deno.remove(profile, { recursive: true });
  }
}

if (import.meta.main) await main();
