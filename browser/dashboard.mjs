// The operator's dashboard in headless Chromium: sign in (a wrong token first), read the live
// numbers and check them against what the API said, pause the sale, leave a screenshot.
//
//   node dashboard.mjs <server URL> <operator token> <screenshot path> <expected JSON>
//
// The expected JSON (from the Rust test, read from the API) is
// {"sale": {id, available, held, sold, total, allotted},
//  "tills": {"<id>": {"reach", "entries_pending", "allotment_left"}, ...}}.
import { chromium } from 'playwright-core';

const [base, token, screenshot, expectedJson] = process.argv.slice(2);
const expected = JSON.parse(expectedJson);
const fail = (message) => {
  throw new Error(message);
};
const digits = (text) => Number(text.replaceAll(',', ''));

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const problems = [];
  page.on('pageerror', (error) => problems.push(error.message));
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  await page.goto(`${base}/dashboard`);

  // A wrong token is refused on the page, and nothing is shown.
  await page.fill('#token', 'not-the-token');
  await page.click('#sign-in button[type=submit]');
  await page.locator('#sign-in-error').filter({ hasText: 'not accepted' }).waitFor();
  if (await page.locator('#live').isVisible()) fail('live numbers shown without a token');

  await page.fill('#token', token);
  await page.click('#sign-in button[type=submit]');
  await page.locator('#connection').filter({ hasText: 'live' }).waitFor();
  problems.length = 0; // the refused token's 401 was expected
  if (page.url().includes(token)) fail('the token is in the URL');

  // The sale's numbers, as the API gave them.
  const sale = expected.sale;
  const card = page.locator(`article[data-sale="${sale.id}"]`);
  const field = (name) => card.locator(`[data-field="${name}"]`);
  await page.waitForFunction(({ id, sold }) => {
    const cell = document.querySelector(`article[data-sale="${id}"] [data-field="sold"]`);
    return cell && Number(cell.textContent.replaceAll(',', '')) === sold;
  }, { id: sale.id, sold: sale.sold }, { timeout: 20000 });
  for (const bucket of ['available', 'held', 'sold', 'total', 'allotted']) {
    const shown = digits(await field(bucket).textContent());
    if (shown !== sale[bucket]) fail(`${bucket}: the page shows ${shown}, the API ${sale[bucket]}`);
  }
  const layers = await card.locator('[data-chart="stock"] polygon').count();
  if (layers !== 5) fail(`the stock chart stacks five buckets, not ${layers}`);

  // Each till: in touch or not, and what waits at it.
  for (const [id, till] of Object.entries(expected.tills)) {
    const row = page.locator(`#tills tr[data-till="${id}"]`);
    await row.waitFor();
    const reach = await row.locator('[data-field="reach"] .badge').getAttribute('class');
    if (!reach.includes(till.reach)) fail(`till ${id}: shown as "${reach}", expected ${till.reach}`);
    const pending = digits(await row.locator('[data-field="entries_pending"]').textContent());
    if (pending !== till.entries_pending) fail(`till ${id}: ${pending} entries pending shown`);
    const left = digits(await row.locator('[data-field="allotment_left"]').textContent());
    if (left !== till.allotment_left) fail(`till ${id}: allotment left ${left} shown`);
    const contact = await row.locator('[data-field="last_contact"]').textContent();
    if (till.reach === 'unreachable' && !contact.includes('offline since')) {
      fail(`till ${id}: an unreachable till says since when: ${contact}`);
    }
  }

  // Pause the sale from the page.
  await card.locator('button[data-action="pause"]').click();
  await field('paused-badge').filter({ hasText: 'sale paused' }).waitFor();
  if (!(await card.locator('button[data-action="pause"]').isDisabled())) {
    fail('the pause button stays enabled on a paused sale');
  }
  const stored = await page.evaluate(() => JSON.stringify(localStorage));
  if (stored.includes(token)) fail('the token was kept beyond this tab');
  if (problems.length) fail(`the page reported errors: ${problems.join('; ')}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log('dashboard checked: numbers match the API, tills told apart, sale paused');
} finally {
  await browser.close();
}
