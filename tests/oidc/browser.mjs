// `$BROWSER` for the single sign-on end-to-end test: Debian's chromium, headless, driven by
// playwright-core, signs in at the provider's own login page and consents, until the
// provider sends it to the CLI's loopback callback.
//
//   node browser.mjs URL
//
// The login comes from BAMF_TEST_SSO_LOGIN and BAMF_TEST_SSO_PASSWORD; chromium from
// CHROMIUM (default /usr/bin/chromium). Exits 0 once the callback page says the CLI
// signed in.
import { chromium } from 'playwright-core';

const url = process.argv[2];
const login = process.env.BAMF_TEST_SSO_LOGIN;
const password = process.env.BAMF_TEST_SSO_PASSWORD ?? 'any';
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--no-proxy-server', '--disable-gpu', '--disable-dev-shm-usage'],
  timeout: 60_000,
});
let ok = false;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(url);
  // The authorization code flow ends at the CLI's loopback callback; the device grant at the
  // provider's success page.
  const done = async () => /\/callback\?/.test(page.url())
    || /Sign-in Success/.test((await page.textContent('body')) ?? '');
  for (let step = 0; step < 8 && !(await done()); step += 1) {
    if (await page.locator('input[name=user_code]').count()) {
      const code = process.env.BAMF_TEST_SSO_USER_CODE;
      if (code) await page.fill('input[name=user_code]', code);
    }
    if (await page.locator('input[name=login]').count()) {
      await page.fill('input[name=login]', login);
      await page.fill('input[name=password]', password);
    }
    const button = (await page.locator('button[autofocus]').count())
      ? 'button[autofocus]' : 'button[type=submit]';
    await Promise.all([page.waitForNavigation(), page.click(button)]);
  }
  const text = await page.textContent('body');
  ok = await done() && (/Signed in to BAMF/.test(text ?? '') || /Sign-in Success/.test(text ?? ''));
  console.error(`browser: ${ok ? 'signed in' : 'did not sign in'} (${new URL(page.url()).pathname}: ${text?.trim().slice(0, 120)})`);
} catch (e) {
  console.error(`browser: ${e}`);
} finally {
  await browser.close();
}
process.exit(ok ? 0 : 1);
