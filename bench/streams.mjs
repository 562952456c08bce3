// `make bench`'s stream client: N concurrent streaming chat completions, each event timed.
//
//   node bench/streams.mjs URL MODEL N [STALL_MS]
//
// Opens N streams at once (one connection each), reads their server-sent events as they
// arrive and prints one JSON line: how many streams completed (their [DONE] seen), the
// largest gap between two events of a stream, how many streams had a gap over STALL_MS
// (default 100; a stall), and the time to the first event (p50, p99). Gaps are measured from
// the first event on, so connecting N streams at once is not counted as a stall. Node's event
// loop reads tens of thousands of events a second on one core: the client is not the limit.
import http from "node:http";

const [url, model, count, stallArg] = process.argv.slice(2);
const streams = Number(count);
const stallMs = Number(stallArg ?? 100);
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

function one(i) {
  return new Promise((resolve) => {
    const body = JSON.stringify({
      model,
      stream: true,
      messages: [{ role: "user", content: `stream ${i} ${Math.random()}` }],
    });
    const started = performance.now();
    const result = { first: null, maxGap: 0, events: 0, done: false, error: null };
    let last = null;
    let buffer = "";
    const request = http.request(
      url,
      {
        method: "POST",
        agent,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          "cache-control": "no-cache, no-store",
        },
      },
      (response) => {
        if (response.statusCode !== 200) result.error = `status ${response.statusCode}`;
        response.setEncoding("utf8");
        response.on("data", (text) => {
          const now = performance.now();
          buffer += text;
          let end;
          let seen = 0;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            if (event === "data: [DONE]") result.done = true;
            else if (event.startsWith("data: ")) seen += 1;
          }
          if (!seen && !result.done) return;
          result.events += seen;
          if (last === null) result.first = now - started;
          else result.maxGap = Math.max(result.maxGap, now - last);
          last = now;
        });
        response.on("end", () => resolve(result));
        response.on("error", (error) => {
          result.error = String(error);
          resolve(result);
        });
      },
    );
    request.on("error", (error) => {
      result.error = String(error);
      resolve(result);
    });
    request.end(body);
  });
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const results = await Promise.all(Array.from({ length: streams }, (_, i) => one(i)));
const firsts = results.filter((r) => r.first !== null).map((r) => r.first);
const errors = results.filter((r) => r.error).map((r) => r.error);
console.log(
  JSON.stringify({
    streams,
    complete: results.filter((r) => r.done && !r.error).length,
    stalled: results.filter((r) => r.maxGap > stallMs).length,
    max_gap_ms: Math.max(0, ...results.map((r) => r.maxGap)),
    gap_p99_ms: percentile(
      results.map((r) => r.maxGap),
      99,
    ),
    first_p50_ms: percentile(firsts, 50),
    first_p99_ms: percentile(firsts, 99),
    events_min: Math.min(...results.map((r) => r.events)),
    errors: errors.slice(0, 3),
  }),
);
