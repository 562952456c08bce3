// Copies the libraries the playground uses from node_modules (installed by `npm ci` from the
// committed package-lock.json) into the Python package, without their source-map comments.
// `node vendor.mjs --check` fails when a copy differs from what it would write (CI runs it).
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = join(here, "..", "src", "palaver", "playground", "static", "vendor");
const files = {
  "marked.esm.js": "node_modules/marked/lib/marked.esm.js",
  "purify.es.mjs": "node_modules/dompurify/dist/purify.es.mjs",
};

const check = process.argv.includes("--check");
let stale = 0;
for (const [name, source] of Object.entries(files)) {
  const text = readFileSync(join(here, source), "utf8").replace(/^\/\/# sourceMappingURL=.*$/m, "");
  const path = join(target, name);
  if (check) {
    if (!existsSync(path) || readFileSync(path, "utf8") !== text) {
      console.error(`${name} is not the copy of ${source}: run 'node web/vendor.mjs'`);
      stale += 1;
    }
  } else {
    writeFileSync(path, text);
    console.log(`${name} <- ${source}`);
  }
}
process.exit(stale ? 1 : 0);
