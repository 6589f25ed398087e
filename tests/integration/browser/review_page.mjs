// Drives the labelling page the way a person does, in Debian's Chromium (headless), and prints what
// it saw as one JSON line. Used by tests/integration/test_review_page.py, which checks the server side.
//   node review_page.mjs <page url> <admin token> <screenshot path> <label key>
// Steps: open the page (the browser answers the Basic-auth challenge with the token), wait for the
// first queued ticket, screenshot, press <label key> (a digit), wait for the next ticket, press "s".
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, token, screenshot, labelKey] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "kubetune-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
  httpCredentials: { username: "admin", password: token },
  viewport: { width: 1000, height: 640 },
});
const seen = { console: [] };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => seen.console.push(m.type() + ": " + m.text()));
  page.on("pageerror", (e) => seen.console.push("pageerror: " + e.message));
  const response = await page.goto(url);
  seen.status = response.status();
  await page.waitForFunction(() => document.querySelectorAll("#labels button").length > 0, null, { timeout: 30000 });
  seen.first = await page.textContent("#text");
  seen.guesses = await page.textContent("#guesses");
  seen.buttons = await page.$$eval("#labels button", (bs) => bs.map((b) => [b.textContent.trim(), b.className]));
  seen.waitingBefore = await page.textContent("#waiting");
  await page.screenshot({ path: screenshot });

  await page.keyboard.press(labelKey);
  await page.waitForFunction((first) => document.querySelector("#text").textContent !== first, seen.first, { timeout: 30000 });
  seen.statusAfterLabel = await page.textContent("#status");
  seen.second = await page.textContent("#text");

  await page.keyboard.press("s");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "Skipped.", null, { timeout: 30000 });
  seen.third = await page.textContent("#text");
  seen.waitingAfter = await page.textContent("#waiting");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(seen));
