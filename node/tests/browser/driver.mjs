// Opens pages in headless Chromium (fake camera and microphone) and reports, once a second,
// one JSON line with each page's state and media statistics. The Rust tests read these lines.
//
// usage: node driver.mjs '{"pages":[{"name":"pub","url":"http://..."}],"seconds":60,"args":[]}'
// (`args`: extra Chromium flags, e.g. a video file for the fake camera)
// stdin: JSON lines {"open":{"name":..,"url":..}}, {"eval":{"name":..,"js":..}},
// {"script":{"name":..,"path":..}} (a script file run in the page, e.g. an npm package's UMD
// build), {"fill":{"name":..,"selector":..,"value":..}} and {"click":{"name":..,"selector":..}}
// (as a user types and clicks: React pages see them), {"screenshot":{"name":..,"path":..}}
// (a PNG, plus PATH.json with its size and pixel statistics, measured by Chromium) or
// {"close":"name"}; EOF ends the run.

import { chromium } from "playwright-core";
import readline from "node:readline";

const spec = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    ...(spec.args || []),
  ],
});
const context = await browser.newContext();
const pages = new Map();

async function open(name, url) {
  const page = await context.newPage();
  page.on("console", (m) => {
    if (process.env.DRIVER_VERBOSE) process.stderr.write(`[${name}] ${m.text()}\n`);
  });
  page.on("pageerror", (e) => process.stderr.write(`[${name}] page error: ${e}\n`));
  pages.set(name, page);
  await page.goto(url);
}

async function sample(page) {
  try {
    return await page.evaluate(async () => {
      const stats = window.sfuStats ? await window.sfuStats() : null;
      const state = window.sfu ? window.sfu.state : window.session ? window.session.state : "unknown";
      const errors = window.sfu ? window.sfu.errors : window.session && window.session.error ? [window.session.error] : [];
      return { state, errors, stats };
    });
  } catch (e) {
    return { state: "unreachable", errors: [String(e)], stats: null };
  }
}

// Saves a PNG of the page and, next to it, what it holds: its byte size, its pixel size, the
// number of distinct colours (in 4-bit steps) and the luminance's standard deviation, decoded
// by Chromium in a blank page of its own (a blank or one-colour screenshot has ~1 and ~0).
async function screenshot(page, path) {
  const png = await page.screenshot({ path });
  const probe = await context.newPage();
  try {
    const stats = await probe.evaluate(async (b64) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const c = document.createElement("canvas");
      c.width = img.width;
      c.height = img.height;
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      const colours = new Set();
      let sum = 0;
      let sq = 0;
      const n = d.length / 4;
      for (let i = 0; i < d.length; i += 4) {
        colours.add(((d[i] >> 4) << 8) | ((d[i + 1] >> 4) << 4) | (d[i + 2] >> 4));
        const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
        sum += y;
        sq += y * y;
      }
      const mean = sum / n;
      return { width: c.width, height: c.height, colours: colours.size, stddev: Math.sqrt(sq / n - mean * mean) };
    }, png.toString("base64"));
    // Written whole, then renamed: the test reads it as soon as it exists.
    const { rename, writeFile } = await import("node:fs/promises");
    await writeFile(`${path}.json.part`, JSON.stringify({ bytes: png.length, ...stats }));
    await rename(`${path}.json.part`, `${path}.json`);
  } finally {
    await probe.close();
  }
}

for (const p of spec.pages) await open(p.name, p.url);

let done = false;
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  try {
    const cmd = JSON.parse(line);
    if (cmd.open) await open(cmd.open.name, cmd.open.url);
    if (cmd.eval) {
      const page = pages.get(cmd.eval.name);
      if (page) await page.evaluate(cmd.eval.js);
    }
    if (cmd.script) {
      const page = pages.get(cmd.script.name);
      if (page) await page.addScriptTag({ path: cmd.script.path });
    }
    if (cmd.fill) {
      const page = pages.get(cmd.fill.name);
      if (page) await page.fill(cmd.fill.selector, cmd.fill.value);
    }
    if (cmd.click) {
      const page = pages.get(cmd.click.name);
      if (page) await page.click(cmd.click.selector);
    }
    if (cmd.screenshot) {
      const page = pages.get(cmd.screenshot.name);
      if (page) await screenshot(page, cmd.screenshot.path);
    }
    if (cmd.close) {
      const page = pages.get(cmd.close);
      pages.delete(cmd.close);
      if (page) await page.close();
    }
  } catch (e) {
    process.stderr.write(`driver: bad command ${line}: ${e}\n`);
  }
});
rl.on("close", () => {
  done = true;
});

const started = Date.now();
while (!done && Date.now() - started < (spec.seconds || 120) * 1000) {
  await new Promise((r) => setTimeout(r, 1000));
  const out = { t: (Date.now() - started) / 1000, pages: {} };
  for (const [name, page] of pages) out.pages[name] = await sample(page);
  process.stdout.write(JSON.stringify(out) + "\n");
}
await browser.close();
