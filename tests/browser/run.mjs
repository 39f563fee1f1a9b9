// Browser tests of Panshi's pages: Debian's headless Chromium driven by playwright-core.
//
//   node run.mjs PATH/TO/panshi
//
// Each test starts its own `panshi serve --demo` on port 0 with a fresh data dir, drives the
// pages as a person would, and saves a screenshot under target/browser-screenshots/. Exits
// non-zero when any test fails; the last line reads "N passed, N failed".

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SCREENSHOTS = path.resolve(HERE, "../../target/browser-screenshots");
// The operator token every test server gets (demo mode generates one otherwise).
const ADMIN_TOKEN = "browser-test-admin-token-0123456789";
const SERVER_START_MS = 60_000;
const STEP_TIMEOUT_MS = 15_000;
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

const binary = path.resolve(process.cwd(), process.argv[2] || "../../target/release/panshi");
// However this script ends, the servers go with it (one listener for them all).
const servers = new Set();
/** Chromium profile directories not yet removed (Chromium may write one as it exits). */
const profiles = new Set();
const removeDir = (dir) => {
  try { rmSync(dir, { recursive: true, force: true, maxRetries: 5 }); return true; } catch { return false; }
};
process.on("exit", () => {
  for (const child of servers) child.kill("SIGKILL");
  for (const dir of profiles) removeDir(dir);
});

/**
 * Starts `panshi serve --demo` (port 0 and a fresh data dir unless given; without the demo
 * when `demo` is false); resolves once it prints its address. `crash()` kills it with
 * SIGKILL and keeps the data dir.
 */
function startServer(extraEnv = {}, { listen = "127.0.0.1:0", data, demo = true } = {}) {
  data = data || mkdtempSync(path.join(tmpdir(), "panshi-browser-"));
  const args = ["serve", ...(demo ? ["--demo"] : []), "--listen", listen, "--data", data];
  const child = spawn(binary, args, {
    // Errors only: operators' actions log at warn, and a test's output is its own.
    env: { ...process.env, PANSHI_LOG__LEVEL: "error", PANSHI_ADMIN_TOKEN: ADMIN_TOKEN, ...extraEnv },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const stop = () => {
    child.kill("SIGKILL");
    try { rmSync(data, { recursive: true, force: true, maxRetries: 5 }); } catch { /* ignored */ }
  };
  const crash = async () => { child.kill("SIGKILL"); await exited; };
  servers.add(child);
  child.on("exit", () => servers.delete(child));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { stop(); reject(new Error("server did not start")); }, SERVER_START_MS);
    exited.then((code) => reject(new Error(`server exited early (${code})`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const match = line.match(/^panshi: listening on (http:\/\/\S+)$/);
      if (match) {
        clearTimeout(timer);
        resolve({ base: match[1], data, stop, crash });
      }
    });
  });
}

async function api(base, method, urlPath, body, token) {
  const headers = { "Content-Type": typeof body === "string" ? "text/plain" : "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(base + urlPath, {
    method, headers, body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: response.status, json };
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/**
 * A fresh Chromium with its own fresh profile (playwright takes the profile directory as an
 * argument, not as `--user-data-dir`), recording console errors, CSP reports and dialogs.
 */
async function newPage(options = {}) {
  const userDataDir = mkdtempSync(path.join(tmpdir(), "panshi-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
    ...options,
  });
  profiles.add(userDataDir);
  context.on("close", () => {
    // Chromium may still be writing its profile as it exits: what stays is removed at exit.
    if (removeDir(userDataDir)) profiles.delete(userDataDir);
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  const watch = (p) => {
    p.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
    p.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    p.on("dialog", (d) => { problems.push(`dialog: ${d.message()}`); d.dismiss(); });
  };
  watch(page);
  context.on("page", watch);
  return { context, page, problems };
}

async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page, base) {
  await page.goto(`${base}/admin`);
  await page.getByLabel("Operator token").fill(ADMIN_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
}

// (1) A buyer buys through the demo gateway and sees the key appear live.
async function buyerSeesKeyLive() {
  const server = await startServer();
  const { context, page, problems } = await newPage({
    viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true,
  });
  try {
    await page.goto(`${server.base}/`);
    await page.getByRole("link", { name: "VPN 30-day pass" }).click();
    await page.getByLabel("Contact (e-mail or phone)").fill("buyer@example.com");
    await page.getByLabel("Quantity").fill("1");
    await page.getByLabel("Alipay").check();
    await page.getByRole("button", { name: "Buy and pay" }).click();
    await page.getByRole("heading", { name: "Your order" }).waitFor();
    check((await page.locator("#status").textContent()) === "Waiting for payment", "status before payment");
    // Marks this document: if the keys came by a reload instead of the socket, it is gone.
    await page.evaluate(() => { window.panshiMarker = 1; });
    const [gateway] = await Promise.all([
      context.waitForEvent("page"),
      page.getByRole("link", { name: "Pay now" }).click(),
    ]);
    await gateway.getByRole("button", { name: "Pay" }).click();
    await gateway.waitForLoadState();
    check((await gateway.content()).includes("success"), "the demo gateway paid");
    await gateway.close();
    await page.locator("#keys code.key").first().waitFor();
    const key = await page.locator("#keys code.key").first().textContent();
    check(/^VPN-DEMO-\d{4}-[0-9A-F]{8}$/.test(key), `a demo key appeared: ${key}`);
    check((await page.locator("#status").textContent()) === "Delivered", "status delivered");
    check(await page.evaluate(() => window.panshiMarker === 1), "the key arrived without a reload");
    check(await page.locator("#pay").isHidden(), "the pay link is gone once paid");
    await page.getByRole("button", { name: "Copy" }).first().click();
    await page.getByRole("button", { name: "Copied" }).first().waitFor();
    await screenshot(page, "1a-buyer-key-delivered-phone");
    // The language switch keeps the buyer on the same order, now in Chinese.
    await page.getByRole("link", { name: "中文" }).click();
    await page.getByRole("heading", { name: "您的订单" }).waitFor();
    check((await page.locator("#status").textContent()) === "已发货", "status in Chinese");
    check((await page.locator("#keys code.key").first().textContent()) === key, "same key after the switch");
    await screenshot(page, "1b-buyer-order-chinese-phone");
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

// (2) An operator signs in, imports keys and confirms a manual-payment order.
async function operatorImportsAndConfirms() {
  // epusdt points at a closed port, so a USDT order falls to the manual payment queue. Demo
  // mode refuses to run beside a real gateway's settings: this shop is a plain one.
  const server = await startServer({
    PANSHI_EPUSDT__GATEWAY_URL: "http://127.0.0.1:9",
    PANSHI_EPUSDT__TOKEN: "browser-test-token",
  }, { demo: false });
  const product = await api(server.base, "POST", "/api/v1/admin/products",
    { sku: "vpn-30d", name: "VPN 30-day pass", price_cents: 1500, currency: "CNY" }, ADMIN_TOKEN);
  check(product.status === 201, `product created: ${JSON.stringify(product.json)}`);
  const { context, page, problems } = await newPage({ viewport: { width: 1100, height: 900 } });
  try {
    await signIn(page, server.base);
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "panshi_session");
    check(session && session.httpOnly && session.sameSite === "Strict", "HttpOnly SameSite=Strict session cookie");
    await screenshot(page, "2-operator-dashboard");
    await page.getByRole("link", { name: "Products" }).click();
    await page.getByLabel("Product", { exact: true }).selectOption("vpn-30d");
    await page.getByLabel("Keys, one per line").fill("BROWSER-KEY-1\nBROWSER-KEY-2\n\nBROWSER-KEY-1\n");
    await page.getByRole("button", { name: "Import" }).click();
    await page.getByRole("heading", { name: "Import result" }).waitFor();
    check((await page.locator("#imported").textContent()) === "2", "two keys imported");
    check((await page.locator("#duplicates").textContent()) === "1", "one duplicate");
    check((await page.locator("#rejected").textContent()) === "0", "none rejected");
    await screenshot(page, "2a-operator-import-result");

    const order = await api(server.base, "POST", "/api/v1/orders",
      { sku: "vpn-30d", quantity: 1, contact: "late@example.com", channel: "usdt" });
    check(order.status === 201 && order.json.payment.channel === "manual", `manual order: ${JSON.stringify(order.json)}`);
    const orderId = order.json.order_id;
    await page.getByRole("link", { name: "Queues" }).click();
    const row = page.locator("tr", { hasText: orderId });
    await row.getByRole("textbox").fill("bank transfer ref 12345");
    await screenshot(page, "2b-operator-manual-payment-queue");
    await row.getByRole("button", { name: "Confirm payment" }).click();
    await page.locator("#result-status").waitFor();
    check((await page.locator("#result-status").getAttribute("data-status")) === "delivered", "confirmed order delivered");
    check((await page.locator("#result-status").textContent()) === "Delivered", "the status in words");
    await screenshot(page, "2c-operator-confirmed");
    const lookup = await api(server.base, "GET", `/api/v1/orders/${orderId}?token=${order.json.token}`);
    check(lookup.json.status === "delivered" && lookup.json.cards.length === 1, "the buyer sees the key");
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("Operator token").waitFor();
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
    check((await page.goto(`${server.base}/admin/queues`)).status() === 401, "signed out: refused");
  } finally {
    await context.close();
    server.stop();
  }
}

// (3) A product named like markup renders as inert text, for buyers and operators.
async function markupNameIsInert() {
  const server = await startServer();
  const name = "<img src=x onerror=alert(1)>";
  const { context, page, problems } = await newPage({ viewport: { width: 1000, height: 800 } });
  try {
    const created = await api(server.base, "POST", "/api/v1/admin/products",
      { sku: "xss-1", name, price_cents: 100, currency: "CNY" }, ADMIN_TOKEN);
    check(created.status === 201, `product created: ${JSON.stringify(created.json)}`);
    await api(server.base, "POST", "/api/v1/admin/products/xss-1/cards", "XSS-KEY-1\n", ADMIN_TOKEN);
    for (const urlPath of ["/", "/product/xss-1"]) {
      await page.goto(server.base + urlPath);
      check(await page.getByText(name, { exact: true }).first().isVisible(), `${urlPath}: name shown as text`);
      check((await page.locator("img").count()) === 0, `${urlPath}: no img element`);
    }
    await screenshot(page, "3a-markup-name-product-page");
    await page.goto(`${server.base}/`);
    await screenshot(page, "3b-markup-name-catalogue");
    await signIn(page, server.base);
    await page.goto(`${server.base}/admin/products`);
    check(await page.getByRole("cell", { name, exact: true }).isVisible(), "admin: name shown as text");
    check((await page.locator("img").count()) === 0, "admin: no img element");
    await screenshot(page, "3c-markup-name-admin");
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

// (4) The socket drops (the server is killed); the page says so, reconnects to the restarted
// server and shows the current state: the order paid meanwhile, with its key.
async function orderPageReconnects() {
  let server = await startServer();
  const { context, page, problems } = await newPage({ viewport: { width: 800, height: 700 } });
  try {
    await page.goto(`${server.base}/product/steam-10`);
    await page.getByLabel("Contact (e-mail or phone)").fill("again@example.com");
    await page.getByRole("button", { name: "Buy and pay" }).click();
    await page.getByRole("heading", { name: "Your order" }).waitFor();
    const payUrl = await page.getByRole("link", { name: "Pay now" }).getAttribute("href");
    await server.crash();
    await page.locator("#conn").waitFor({ state: "visible" });
    await screenshot(page, "4a-order-reconnecting");
    const listen = new URL(server.base).host;
    server = await startServer({}, { listen, data: server.data });
    const paid = await fetch(payUrl, { method: "POST" });
    check(paid.ok, `paid at the demo gateway after the restart: ${paid.status}`);
    await page.locator("#keys code.key").first().waitFor({ timeout: 30_000 });
    check(/^STEAM-DEMO-/.test(await page.locator("#keys code.key").first().textContent()), "the key");
    check(await page.locator("#conn").isHidden(), "the reconnecting notice is gone");
    await screenshot(page, "4b-order-reconnected-delivered");
    // While the server was down the browser logged failed socket attempts; nothing else.
    const others = problems.filter((p) => !p.includes("WebSocket"));
    check(others.length === 0, `no other console errors: ${others.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

/**
 * A demo server with vpn-30d on flash sale, admitting `perSecond` a second, and `ahead`
 * buyers already in line. Per-client limits are off, as those buyers share an IP.
 */
async function flashSaleWithBuyersAhead(perSecond, ahead) {
  const server = await startServer({
    PANSHI_FLASH__ADMIT_PER_SECOND: String(perSecond),
    PANSHI_LIMITS__CREATE__PER_SECOND: "1000",
    PANSHI_LIMITS__CREATE__BURST: "1000",
    PANSHI_RISK__ORDERS_PER_IP_PER_MINUTE_MAX: "0",
    PANSHI_RISK__RESERVED_UNITS_PER_IP_MAX: "0",
  });
  const on = await api(server.base, "POST", "/api/v1/admin/products/vpn-30d/flash-sale", { enabled: true }, ADMIN_TOKEN);
  check(on.status === 200, `flash sale on: ${JSON.stringify(on.json)}`);
  for (let n = 0; n < ahead; n++) {
    const queued = await api(server.base, "POST", "/api/v1/orders",
      { sku: "vpn-30d", quantity: 1, contact: `ahead${n}@example.com`, channel: "alipay" });
    check(queued.status === 202, `buyer ${n} queued: ${JSON.stringify(queued.json)}`);
  }
  return server;
}

// (5) In a flash sale the buyer waits in line on a page that counts down live, then lands
// on the order page by itself when admitted.
async function flashSaleBuyerWaitsInLine() {
  // 18 buyers ahead (the demo stock is 20 keys), four admissions a second: about 4.5 s in
  // line, long enough to see the place advance even when the browser is slow to load the page.
  // Chromium starts first: on a loaded machine its start alone can outlast the line.
  const { context, page, problems } = await newPage({ viewport: { width: 800, height: 700 } });
  const server = await flashSaleWithBuyersAhead(4, 18);
  try {
    await page.goto(`${server.base}/product/vpn-30d`);
    await page.getByLabel("Contact (e-mail or phone)").fill("patient@example.com");
    await page.getByRole("button", { name: "Buy and pay" }).click();
    await page.getByRole("heading", { name: "You are in line" }).waitFor();
    const first = Number(await page.locator("#position").textContent());
    check(first >= 1 && first <= 19, `a place in line: ${first}`);
    await screenshot(page, "5a-flash-sale-in-line");
    await page.waitForFunction(
      (start) => Number(document.getElementById("position").textContent) < start, first);
    await page.getByRole("heading", { name: "Your order" }).waitFor();
    check((await page.locator("#status").textContent()) === "Waiting for payment", "admitted into an order");
    await screenshot(page, "5b-flash-sale-admitted");
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

// (6) The server restarts while a buyer waits in line: waiting rooms are in memory, so the
// page must not reconnect forever but say the place is gone and that nothing was charged.
async function queuePageAfterRestart() {
  let server = await flashSaleWithBuyersAhead(1, 15);
  const { context, page, problems } = await newPage({ viewport: { width: 800, height: 700 } });
  try {
    await page.goto(`${server.base}/product/vpn-30d`);
    await page.getByLabel("Contact (e-mail or phone)").fill("restart@example.com");
    await page.getByRole("button", { name: "Buy and pay" }).click();
    await page.getByRole("heading", { name: "You are in line" }).waitFor();
    await server.crash();
    await page.locator("#conn").waitFor({ state: "visible" });
    const listen = new URL(server.base).host;
    server = await startServer({}, { listen, data: server.data });
    await page.getByRole("heading", { name: "Your place in line is gone" }).waitFor({ timeout: 30_000 });
    await screenshot(page, "6-queue-after-restart");
    const others = problems.filter((p) => !p.includes("WebSocket") && !p.includes("404"));
    check(others.length === 0, `no other console errors: ${others.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

// (7) An operator edits a product's listing; the storefront shows it at once.
async function operatorEditsProduct() {
  const server = await startServer();
  const { context, page, problems } = await newPage({ viewport: { width: 1100, height: 900 } });
  try {
    await signIn(page, server.base);
    await page.getByRole("link", { name: "Products" }).click();
    await page.locator("#products tr", { hasText: "vpn-30d" }).getByRole("link", { name: "Edit" }).click();
    await page.getByRole("heading", { name: /Edit product/ }).waitFor();
    await page.getByLabel("Name").fill("VPN 30-day pass, all regions");
    await page.getByLabel(/^Price/).fill("12.80");
    await page.getByLabel("Category").fill("Network");
    await page.getByLabel("Description").fill("Works on phones and computers.");
    await page.getByLabel(/^Usage note/).fill("Open the app and paste the key.");
    await page.getByLabel(/^Most keys per order/).fill("2");
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator("#saved").waitFor();
    check((await page.getByLabel(/^Price/).inputValue()) === "12.80", "the new price kept in the form");
    await screenshot(page, "7a-operator-product-edit");
    await page.goto(`${server.base}/`);
    await page.getByRole("heading", { name: "Network" }).waitFor();
    const item = page.locator('li.product[data-sku="vpn-30d"]');
    check((await item.locator(".name").textContent()) === "VPN 30-day pass, all regions", "the new name listed");
    check((await item.locator(".price").textContent()) === "12.80 CNY", "the new price listed");
    await screenshot(page, "7b-catalogue-after-edit");
    const order = await api(server.base, "POST", "/api/v1/orders",
      { sku: "vpn-30d", quantity: 2, contact: "e@example.com", channel: "alipay" });
    check(order.status === 201 && order.json.amount_cents === 2560, `the next order pays the new price: ${JSON.stringify(order.json)}`);
    const over = await api(server.base, "POST", "/api/v1/orders",
      { sku: "vpn-30d", quantity: 3, contact: "e@example.com", channel: "alipay" });
    check(over.status === 400, "over the purchase limit");
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

// (8) An operator searches a product's keys, exports them as CSV and deletes one.
async function operatorExportsAndDeletesKeys() {
  const server = await startServer();
  const { context, page, problems } = await newPage({ viewport: { width: 1100, height: 900 }, acceptDownloads: true });
  try {
    await signIn(page, server.base);
    await page.goto(`${server.base}/admin/products/vpn-30d/keys`);
    check((await page.locator("#keys-total").textContent()).startsWith("Matching keys: 20"), "twenty demo keys");
    await page.getByLabel("Search keys").fill("DEMO-0007");
    await page.getByRole("button", { name: "Search" }).click();
    await page.waitForURL(/q=DEMO-0007/);
    check((await page.locator("#keys-total").textContent()).startsWith("Matching keys: 1"), "one key found");
    const key = await page.locator("#keys-table code.key").first().textContent();
    await screenshot(page, "8a-operator-keys-search");
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("link", { name: "Export CSV" }).click(),
    ]);
    const csv = await (await download.createReadStream()).toArray();
    const lines = Buffer.concat(csv).toString("utf8").trim().split("\n");
    check(lines[0] === "card_id,key,status,order_id", `CSV header: ${lines[0]}`);
    check(lines.length === 2 && lines[1].includes(`,${key},available,`), `CSV row: ${lines[1]}`);
    await page.getByRole("checkbox", { name: `Select ${key}` }).check();
    await page.getByRole("button", { name: "Delete selected keys" }).click();
    await page.locator("#deleted").waitFor();
    check((await page.locator("#deleted").textContent()) === "Deleted: 1", "one key deleted");
    await screenshot(page, "8b-operator-key-deleted");
    const stock = await api(server.base, "GET", "/api/v1/admin/products/vpn-30d/stock", undefined, ADMIN_TOKEN);
    check(stock.json.available === 19 && stock.json.deleted === 1, `stock after the deletion: ${JSON.stringify(stock.json)}`);
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

// (9) An operator finds a buyer's order by contact and reads its keys and link.
async function operatorSearchesOrders() {
  const server = await startServer();
  const { context, page, problems } = await newPage({ viewport: { width: 1200, height: 900 } });
  try {
    for (const contact of ["lost@example.com", "other@example.com", "third@example.com"]) {
      const made = await api(server.base, "POST", "/api/v1/orders",
        { sku: "steam-10", quantity: 1, contact, channel: "alipay" });
      check(made.status === 201, `order for ${contact}`);
      if (contact === "lost@example.com") {
        const paid = await fetch(made.json.payment.url, { method: "POST" });
        check(paid.ok, "paid at the demo gateway");
      }
    }
    await signIn(page, server.base);
    await page.getByRole("link", { name: "Orders" }).first().click();
    await page.getByRole("heading", { name: "Orders", exact: true }).waitFor();
    await page.getByLabel("Order id or contact").fill("lost@");
    await page.getByRole("button", { name: "Search" }).click();
    await page.waitForURL(/q=lost/);
    check((await page.locator("#orders-total").textContent()).startsWith("Matching orders: 1"), "one order found");
    const row = page.locator("tbody tr");
    check((await row.count()) === 1, "one row");
    check((await row.locator("[data-status]").textContent()) === "Delivered", "the status in words");
    await screenshot(page, "9a-operator-order-search");
    await row.getByRole("link").first().click();
    await page.locator("#buyer-link").waitFor();
    const link = await page.locator("#buyer-link").getAttribute("href");
    check(/\/order\/[0-9a-f]+\?token=[0-9a-f]{32}$/.test(link), `the buyer's link: ${link}`);
    check((await page.locator("#order-keys code.key").count()) === 1, "the delivered key shown");
    await screenshot(page, "9b-operator-order-detail");
    await page.getByRole("link", { name: "中文" }).click();
    await page.getByRole("heading", { name: "买家的订单页面" }).waitFor();
    await screenshot(page, "9c-operator-order-detail-chinese");
    await page.getByRole("link", { name: "English" }).click();
    await page.getByRole("link", { name: "Dashboard" }).click();
    check((await page.locator("#revenue-days").textContent()).includes("72.00 CNY"), "today's revenue");
    check((await page.locator("#revenue-products").textContent()).includes("steam-10"), "revenue per product");
    await screenshot(page, "9d-operator-dashboard-revenue");
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

// (10) A buyer who lost the order link finds the order again by contact and lookup
// password; the demo gateway brought them back to the order page after paying.
async function buyerFindsOrderByContact() {
  const server = await startServer();
  const buyer = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const later = await newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  try {
    const { context, page } = buyer;
    await page.goto(`${server.base}/product/office-365`);
    await page.getByLabel("Contact (e-mail or phone)").fill("forgetful@example.com");
    await page.getByLabel("Lookup password (optional)").fill("blue horse 42");
    await page.getByRole("button", { name: "Buy and pay" }).click();
    await page.getByRole("heading", { name: "Your order" }).waitFor();
    check(/^\d+:\d\d$/.test(await page.locator("#time-left").textContent()), "a countdown to expiry");
    await screenshot(page, "10a-order-countdown-phone");
    const orderUrl = page.url();
    const payUrl = await page.getByRole("link", { name: "Pay now" }).getAttribute("href");
    const [gateway] = await Promise.all([
      context.waitForEvent("page"),
      page.getByRole("link", { name: "Pay now" }).click(),
    ]);
    await gateway.getByRole("button", { name: "Pay" }).click();
    await gateway.getByRole("link", { name: "Back to your order" }).click();
    await gateway.getByRole("heading", { name: "Your order" }).waitFor();
    // The same page without the token in its URL: the browser kept it in a cookie.
    check(gateway.url() === orderUrl.split("?")[0], `the gateway returns to the order page: ${gateway.url()}`);
    check(!gateway.url().includes("token"), "no token in the return URL");
    await gateway.locator("#keys code.key").first().waitFor();
    const key = await gateway.locator("#keys code.key").first().textContent();
    await gateway.goto(payUrl);
    check((await gateway.content()).includes("already paid"), "the cashier knows it is paid");
    check((await gateway.locator("button").count()) === 0, "no Pay button once paid");
    // Another day, another browser, no link: the contact and the password find it.
    const { page: lost, problems } = later;
    await lost.goto(`${server.base}/`);
    await lost.getByRole("link", { name: "Find my order" }).click();
    await lost.getByLabel("Contact (e-mail or phone)").fill("Forgetful@example.com");
    await lost.getByLabel("Lookup password", { exact: true }).fill("wrong horse");
    await lost.getByRole("button", { name: "Find my orders" }).click();
    await lost.locator("#found-none").waitFor();
    await lost.getByLabel("Lookup password", { exact: true }).fill("blue horse 42");
    await lost.getByRole("button", { name: "Find my orders" }).click();
    await lost.locator("#found a").first().waitFor();
    check((await lost.locator("#found li").count()) === 1, "exactly the buyer's order");
    await screenshot(lost, "10b-buyer-lookup-by-contact-phone");
    await lost.locator("#found a").first().click();
    await lost.locator("#keys code.key").first().waitFor();
    check((await lost.locator("#keys code.key").first().textContent()) === key, "the same key, found again");
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
    check(buyer.problems.length === 0, `buyer: ${buyer.problems.join("; ")}`);
  } finally {
    await buyer.context.close();
    await later.context.close();
    server.stop();
  }
}

// (11) The operator names the shop and makes a coupon; the storefront wears the name, the
// banner and the footer, and a buyer's order takes the coupon.
async function operatorSetsIdentityAndCoupon() {
  const server = await startServer();
  const { context, page, problems } = await newPage({ viewport: { width: 1100, height: 900 } });
  try {
    await signIn(page, server.base);
    await page.getByRole("link", { name: "Shop settings" }).click();
    await page.getByLabel("Shop name").fill("Moon Keys");
    await page.getByLabel(/^Announcement banner/).fill("Double keys this weekend!");
    await page.getByLabel("Support contact").fill("help@moon.example");
    await page.getByLabel("Footer text").fill("Moon Keys Ltd. · since 2026");
    await page.getByLabel(/^Terms of sale/).fill("Keys are not refundable once shown.");
    await page.getByLabel(/^Time zone/).fill("480");
    await page.getByRole("button", { name: "Save" }).click();
    await page.locator("#saved").waitFor();
    await screenshot(page, "11a-operator-shop-settings");
    await page.getByRole("link", { name: "Coupons" }).click();
    await page.getByLabel(/^Code/).fill("MOON10");
    await page.getByLabel(/^Percent/).fill("10");
    await page.getByLabel("Uses at most").fill("5");
    await page.getByLabel(/^Valid through/).fill("2999-12-31");
    await page.getByRole("button", { name: "Create coupon" }).click();
    await page.locator("#coupon-result").waitFor();
    await screenshot(page, "11b-operator-coupons");
    await page.goto(`${server.base}/product/steam-10`);
    check((await page.locator("#announcement").textContent()) === "Double keys this weekend!", "the banner");
    check((await page.locator("header .brand").textContent()).includes("Moon Keys"), "the shop's name");
    check((await page.locator("#support").textContent()).includes("help@moon.example"), "the support contact");
    await page.getByLabel("Contact (e-mail or phone)").fill("c@example.com");
    await page.getByLabel("Coupon code (optional)").fill("moon10");
    await page.getByRole("button", { name: "Buy and pay" }).click();
    await page.locator("#coupon-used").waitFor();
    check((await page.locator("#coupon-used").textContent()).includes("MOON10"), "the coupon on the order");
    await screenshot(page, "11c-storefront-identity-coupon-order");
    check(problems.length === 0, `no console errors, CSP reports or dialogs: ${problems.join("; ")}`);
  } finally {
    await context.close();
    server.stop();
  }
}

const TESTS = [
  ["buyer buys through the demo gateway and sees the key live", buyerSeesKeyLive],
  ["operator signs in, imports keys and confirms a manual payment", operatorImportsAndConfirms],
  ["a product named like markup renders as inert text", markupNameIsInert],
  ["the order page reconnects after the socket drops", orderPageReconnects],
  ["a flash-sale buyer waits in line live and lands on the order", flashSaleBuyerWaitsInLine],
  ["a buyer in line is told the place is gone after a restart", queuePageAfterRestart],
  ["an operator edits a product and the storefront shows it", operatorEditsProduct],
  ["an operator searches, exports and deletes keys", operatorExportsAndDeletesKeys],
  ["an operator finds a buyer's order by contact", operatorSearchesOrders],
  ["a buyer finds a lost order by contact and lookup password", buyerFindsOrderByContact],
  ["the operator names the shop and makes a coupon a buyer uses", operatorSetsIdentityAndCoupon],
];

async function main() {
  let passed = 0;
  let failed = 0;
  for (const [name, test] of TESTS) {
    const started = Date.now();
    try {
      await test();
      passed += 1;
      console.log(`ok - ${name} (${Date.now() - started} ms)`);
    } catch (error) {
      failed += 1;
      console.log(`not ok - ${name}: ${error.stack || error}`);
    }
  }
  console.log(`browser: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
