// Copyright the sse authors. MIT license.
// What can never succeed, for SSEClient and EventSource: a failure the same
// request will always meet is final, since retrying it only loads the server
// and the client. Such requests are caught before they are sent where the
// rule is known (the checks below, the same on every runtime), and
// recognised afterwards where only fetch knows (redirects: a loop, a
// redirect to another scheme, to a blocked port, or to a Location that is
// not a URL). Everything else that
// rejects a fetch is a network error, which may work next time. Private:
// never exported from mod.ts or deno.json.

// Fetch standard §2.9 "port blocking": a request to a bad port is a network
// error, whatever the server. Deno, Node and browsers apply it; Bun does not.
// deno-fmt-ignore
const BAD_PORTS = new Set([
  0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77,
  79, 87, 95, 101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135,
  137, 139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531,
  532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720,
  1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667,
  6668, 6669, 6679, 6697, 10080,
]);

// The schemes fetch reads on every runtime (Fetch §4.2 "scheme fetch").
const FETCH_SCHEMES = new Set(["http:", "https:", "data:", "blob:"]);

// RFC 9110 §5.6.2: a method is a token.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

// Fetch §2.2.1: a forbidden method throws in the Request constructor.
const FORBIDDEN_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);

// What fetch refuses in a header value besides what `Headers` already
// refuses (NUL, CR, LF): the other control characters except tab, and DEL.
// Deno and Node refuse them before a byte is sent; Bun sends them, and
// servers answer 400.
// deno-lint-ignore no-control-regex
const UNSENDABLE = /[\x00-\x08\x0a-\x1f\x7f]/;

/** `U+0001`: a character as the standard names code points. */
export function codePoint(char: string): string {
  return `U+${
    char.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")
  }`;
}

/**
 * Whether `value` can be a header value on every runtime: no control
 * character other than tab, and no DEL.
 *
 * @returns `undefined` when it can, else the offending character and index.
 */
export function unsendable(
  value: string,
): { char: string; index: number } | undefined {
  const match = UNSENDABLE.exec(value);
  return match === null ? undefined : { char: match[0], index: match.index };
}

/** What is wrong with headers that fetch cannot send, if anything. */
export function headersProblem(headers: Headers): string | undefined {
  for (const [name, value] of headers) {
    const bad = unsendable(value);
    if (bad !== undefined) {
      return `Invalid header ${name}: its value contains ${
        codePoint(bad.char)
      } at index ${bad.index}, which fetch cannot send`;
    }
  }
  return undefined;
}

/** What is wrong with a request method, if anything. */
export function methodProblem(method: string): string | undefined {
  if (!TOKEN.test(method)) {
    return `Invalid method: ${JSON.stringify(method)} is not an HTTP token`;
  }
  const upper = method.toUpperCase();
  if (FORBIDDEN_METHODS.has(upper)) {
    return `Invalid method: ${upper} is forbidden by the Fetch standard`;
  }
  return undefined;
}

// Fetch §2.2.1 "normalize a method": these six are upper-cased, byte-case-
// insensitively; any other goes out as given (RFC 9110 §9.1: methods are
// case-sensitive, so "mkcol" is not "MKCOL").
const NORMALIZED_METHODS = new Set([
  "DELETE",
  "GET",
  "HEAD",
  "OPTIONS",
  "POST",
  "PUT",
]);

/** A method as fetch sends it (see above). */
export function normalizeMethod(method: string): string {
  const upper = method.toUpperCase();
  return NORMALIZED_METHODS.has(upper) ? upper : method;
}

/** What is wrong with a URL that fetch never requests, if anything. */
export function urlProblem(url: URL): string | undefined {
  if (!FETCH_SCHEMES.has(url.protocol)) {
    return `URL scheme ${url.protocol} is not one fetch reads (http:, https:, data:, blob:)`;
  }
  if (
    (url.protocol === "http:" || url.protocol === "https:") &&
    url.port !== "" &&
    BAD_PORTS.has(Number(url.port))
  ) {
    return `port ${url.port} is blocked by the Fetch standard (a bad port)`;
  }
  return undefined;
}

/** A request that can never be sent, refused before fetch is called. */
class RefusedRequest extends TypeError {
  override name = "TypeError";
}

/**
 * Checks a request before it is sent. Every rule here is one that fetch (or
 * the server) applies to this exact request every time.
 *
 * @throws {TypeError} Naming what can never succeed.
 */
export function checkRequest(url: string, init: RequestInit): void {
  let problem = urlProblem(new URL(url));
  if (problem === undefined && init.method !== undefined) {
    problem = methodProblem(init.method);
  }
  const headers = new Headers(init.headers);
  problem ??= headersProblem(headers);
  if (problem === undefined) {
    try {
      // The runtime's own rules (a body with GET, credentials in the URL on
      // Node...): the Request constructor throws for exactly those.
      new Request(url, {
        method: init.method ?? "GET",
        headers,
        body: init.body ?? null,
      });
    } catch (error) {
      problem = messageOf(error);
    }
  }
  if (problem !== undefined) throw new RefusedRequest(problem);
}

// Error codes that mean "this request", not "the network": Node's undici
// (`cause.code`) and Bun (`code`).
const REFUSAL_CODES = new Set([
  "UND_ERR_INVALID_ARG",
  "ERR_INVALID_ARG_VALUE",
  "ERR_INVALID_URL",
  "ERR_INVALID_HTTP_TOKEN",
  "ERR_INVALID_CHAR",
  "TooManyRedirects",
  "UnsupportedRedirectProtocol",
  // Bun: a Location header that is not a URL.
  "RedirectURLInvalid",
]);

// Where a runtime gives no structure, its own words for the same refusals,
// anchored at the start: Deno's TypeError (which has no cause, unlike its
// network errors) and the cause undici gives without a code. Browsers word
// every network error alike, so there a refusal is retried with backoff.
const REFUSAL_MESSAGES = new RegExp(
  "^(?:" + [
    // Deno
    "Fetch failed: Maximum number of redirects",
    "Fetch failed: Can not redirect to a non HTTP",
    "Fetch failed: Requests to port \\d+ are blocked",
    "Url scheme '[^']*' not supported",
    "failed to parse header value",
    // A Location header that is not a URL (the request URL is checked
    // before fetch is called, so this one comes from a redirect).
    "Invalid URL: '.*' with base '",
    // Node (undici)
    "redirect count exceeded",
    "URL scheme must be a HTTP\\(S\\) scheme",
    "bad port",
    "unknown scheme",
  ].join("|") + ")",
);

function codeOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null | undefined)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Whether an attempt failed in a way that the same request will always meet
 * (a redirect loop, a redirect to another scheme or a blocked port, a method
 * or header fetch refuses), rather than a network error.
 *
 * @param error What {@linkcode Connection.open} rejected with.
 */
export function isRefusal(error: unknown): boolean {
  if (error instanceof RefusedRequest) return true;
  if (!(error instanceof Error)) return false;
  const cause = error.cause;
  const code = codeOf(error) ?? codeOf(cause);
  if (code !== undefined) return REFUSAL_CODES.has(code);
  return REFUSAL_MESSAGES.test(error.message) ||
    (cause instanceof Error && REFUSAL_MESSAGES.test(cause.message));
}

/**
 * The message of a failed attempt: the error's, and its cause's when it
 * adds something (Deno and Node reject with "fetch failed" and put the
 * reason in the cause).
 */
export function describeFailure(error: unknown): string {
  const message = messageOf(error);
  const cause = error instanceof Error ? error.cause : undefined;
  if (
    cause instanceof Error && cause.message !== "" && cause.message !== message
  ) {
    return `${message}: ${cause.message}`;
  }
  return message;
}

/** The message of anything thrown. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
