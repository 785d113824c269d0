// Drives the inspector page in Debian's headless Chromium through playwright-core, for
// tests/test_inspector_browser.py: `node inspector.mjs <chromium>`, then one JSON command a line on stdin,
// one JSON reply a line on stdout ({"reply": id, "result": ...} or {"reply": id, "error": "..."}).
// What the page logs as an error, and any uncaught exception in it, is reported as {"page_error": ...}.
// Commands: goto {url}, wait {selector, timeout_ms, state: attached (default) or detached}, click {selector}, fill {selector, value},
// texts {selector} (the text of every match), screenshot {path}, close.
import readline from "node:readline";
import { chromium } from "playwright-core";

const [executablePath] = process.argv.slice(2);
const out = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
page.on("console", (message) => {
  if (message.type() === "error") out({ page_error: message.text() });
});
page.on("pageerror", (error) => out({ page_error: String(error) }));
page.on("dialog", (dialog) => dialog.accept());

const commands = {
  goto: async ({ url }) => {
    const response = await page.goto(url);
    return response ? response.status() : null;
  },
  wait: async ({ selector, timeout_ms, state }) => {
    await page.waitForSelector(selector, { timeout: timeout_ms, state: state || "attached" });
    return true;
  },
  click: async ({ selector }) => {
    await page.click(selector, { timeout: 2000 });
    return true;
  },
  fill: async ({ selector, value }) => {
    await page.fill(selector, value, { timeout: 2000 });
    return true;
  },
  texts: async ({ selector }) => page.$$eval(selector, (nodes) => nodes.map((node) => node.textContent)),
  screenshot: async ({ path }) => {
    await page.screenshot({ path, fullPage: false });
    return path;
  },
  close: async () => {
    await browser.close();
    return true;
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  try {
    out({ reply: command.id, result: await commands[command.op](command) });
  } catch (error) {
    out({ reply: command.id, error: String(error) });
  }
  if (command.op === "close") break;
}
await browser.close();
