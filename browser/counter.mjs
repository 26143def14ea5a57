// A cashier's day at the counter page, in headless Chromium: sell online, lose the line, keep
// selling, get it back, settle who owes, print again, and leave a screenshot.
//
//   node counter.mjs <counter page URL> <line control URL> <screenshot path>
//
// The line control (run by the Rust test) cuts and restores the till's network on request.
import { chromium } from 'playwright-core';

const [pageUrl, controlUrl, screenshot] = process.argv.slice(2);
const fail = (message) => {
  throw new Error(message);
};

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  const line = () => page.locator('#line');
  const waitForLine = async (state) =>
    page.waitForFunction((s) => document.getElementById('line').textContent === s, state,
      { timeout: 20000 });
  const sell = async (sku, tender, { phone = '', card = '', quantity = '1' } = {}) => {
    await page.goto(pageUrl);
    await page.selectOption('select[name=sku]', sku);
    await page.fill('input[name=quantity]', quantity);
    await page.selectOption('#tender', tender);
    await page.fill('#phone', phone);
    await page.fill('#card_token', card);
    await page.click('#sell');
  };

  await page.goto(pageUrl);
  await waitForLine('online');
  const options = await page.locator('select[name=sku] option').allTextContents();
  if (!options.some((o) => o.includes('KF94 masks') && o.includes('left'))) {
    fail(`scarce items show what is left: ${options}`);
  }

  await sell('KF94', 'card', { card: 'tok_visa' });
  const online = await page.locator('#receipt').textContent();
  for (const expected of ['TOTAL', 'of which VAT', 'business no. 123-45-67890', 'card · auth_']) {
    if (!online.includes(expected)) fail(`online card receipt lacks "${expected}": ${online}`);
  }

  await fetch(`${controlUrl}/cut`, { method: 'POST' });
  await page.goto(pageUrl);
  await waitForLine('offline');
  await sell('KF94', 'card', { card: 'tok_visa' });
  await page.locator('#line-down').waitFor();
  await sell('TEA', 'pay-later', { phone: '010-2468-1357', quantity: '2' });
  const offline = await page.locator('#receipt').textContent();
  if (!offline.includes('to pay:')) fail(`a pay-later receipt carries its pay link: ${offline}`);
  await page.goto(pageUrl);
  const owed = await page.locator('#owed').textContent();
  if (!owed.includes('010-2468-1357')) fail(`who owes lists the customer: ${owed}`);
  const waiting = await page.locator('#waiting').textContent();
  if (waiting === '0') fail('an offline sale waits to sync');

  await fetch(`${controlUrl}/restore`, { method: 'POST' });
  await waitForLine('online');
  await page.waitForFunction(() => document.getElementById('waiting').textContent === '0',
    null, { timeout: 20000 });

  await page.goto(pageUrl);
  await page.locator('#owed button').first().click();
  await page.waitForURL(pageUrl);
  if ((await page.locator('#owed tr').count()) !== 0) fail('the paid receivable is closed');

  await page.locator('#reprints a').last().click();
  const reprinted = await page.locator('#receipt').textContent();
  if (!reprinted.includes('card · auth_')) fail(`the first receipt prints again: ${reprinted}`);

  await page.goto(pageUrl);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`counter page checked; screenshot in ${screenshot}; line ${await line().textContent()}`);
} finally {
  await browser.close();
}
