// Opens every page of a built mdBook in headless Chromium and checks what a
// reader sees: each page loads with no console error, no failed request and
// nothing fetched from outside the book; every internal link and anchor
// resolves; every picture (the diagrams among them) renders with a non-zero
// size inside the content column; no code block is wider than the content column; and the search
// finds a given term. A screenshot of each page with a problem is saved.
//
//   node check-book.mjs BUILT_DIR --out DIR [--search TERM] [--expect-page PAGE]
//                       [--known FILE]
//   node check-book.mjs --self-test FIXTURE_BUILT_DIR --out DIR
//
// --known FILE lists problems that are known and owned elsewhere, one
// `page | kind | key` a line: they are reported but do not fail the check,
// and an entry that no longer occurs fails it, so the list only shrinks.
//
// --self-test runs the same checks on a small book with one mistake of each
// kind (e2e/browser/fixture) and fails unless every mistake is reported and
// the good page has none: the check must be able to fail.
//
// Pages are served from BUILT_DIR through Playwright's request routing under
// http://book.sa-lab.test/, so no port is opened; every other request is
// refused and reported. CHROMIUM names the browser (default
// /usr/bin/chromium, Debian's package).

import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const ORIGIN = "http://book.sa-lab.test";
// Wide enough that mdBook shows the sidebar and caps the content column at
// its desktop width (--content-max-width, 750px).
const VIEWPORT = { width: 1280, height: 900 };
// Chromium must not try to reach anything on this closed network: without
// these it hangs or logs errors on background connections.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
  // Fail closed: nothing resolves, so nothing can leave the machine even if
  // a request slipped past the router.
  "--host-resolver-rules=MAP * ~NOTFOUND",
];

// ---------------------------------------------------------------- arguments

function parseArgs(argv) {
  const args = { search: null, expectPage: null, out: null, dir: null, selfTest: false, known: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--out") args.out = value();
    else if (a === "--search") args.search = value();
    else if (a === "--expect-page") args.expectPage = value();
    else if (a === "--known") args.known = value();
    else if (a === "--self-test") {
      args.selfTest = true;
      args.dir = value();
    } else if (!a.startsWith("--") && !args.dir) args.dir = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.dir || !args.out) {
    throw new Error("usage: check-book.mjs BUILT_DIR --out DIR [--search TERM] | --self-test DIR --out DIR");
  }
  return args;
}

// ---------------------------------------------------------------- the book on disk

/** Every .html file under `root`, as paths relative to it with `/`. */
function htmlPages(root) {
  const out = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".html")) out.push(path.relative(root, p).split(path.sep).join("/"));
    }
  };
  walk(root);
  return out.sort();
}

/** The file a same-origin URL path names, or null if it would leave `root`. */
function fileFor(root, urlPath) {
  let rel = decodeURIComponent(urlPath).replace(/^\/+/, "");
  if (rel === "" || rel.endsWith("/")) rel += "index.html";
  const file = path.resolve(root, rel);
  if (file !== root && !file.startsWith(root + path.sep)) return null;
  return file;
}

// ---------------------------------------------------------------- in the page

/** Runs in the page: everything the checks need, measured as rendered. */
function measurePage() {
  const main = document.querySelector("main") || document.body;
  const column = main.getBoundingClientRect();
  const describe = (el) => {
    const text = (el.textContent || "").split("\n").find((l) => l.trim()) || "";
    return text.trim().slice(0, 60);
  };

  const ids = [...document.querySelectorAll("[id]")].map((e) => e.id);
  for (const a of document.querySelectorAll("a[name]")) ids.push(a.getAttribute("name"));

  const links = [...document.querySelectorAll("a[href]")].map((a) => ({
    href: a.getAttribute("href"),
    url: a.href,
  }));

  // mdBook 0.5 wraps each image in a click-to-zoom label with a hidden
  // second copy: only what is shown is measured.
  const images = [...main.querySelectorAll("img")].filter((img) => img.checkVisibility()).map((img) => {
    const r = img.getBoundingClientRect();
    return {
      src: img.getAttribute("src"),
      complete: img.complete,
      naturalWidth: img.naturalWidth,
      width: r.width,
      height: r.height,
      right: r.right,
    };
  });

  const code = [...main.querySelectorAll("pre > code")].map((c) => {
    const pre = c.parentElement;
    const r = pre.getBoundingClientRect();
    const longest = Math.max(...(c.textContent || "").split("\n").map((l) => [...l].length));
    return {
      first: describe(c),
      longest,
      overflow: c.scrollWidth - c.clientWidth,
      preOverflow: pre.scrollWidth - pre.clientWidth,
      right: r.right,
    };
  });

  return { column: { left: column.left, right: column.right }, ids, links, images, code };
}

// ---------------------------------------------------------------- the checks

async function checkBook({ dir, out, search, expectPage, isKnown = () => false }) {
  const root = path.resolve(dir);
  if (!fs.existsSync(path.join(root, "index.html"))) {
    throw new Error(`${root} has no index.html: build the book first`);
  }
  fs.mkdirSync(out, { recursive: true });
  const pages = htmlPages(root);
  // { page, kind, detail, key }: `key` names the thing at fault in a way
  // that survives small changes (a code block by its first line).
  const problems = [];
  const add = (page, kind, detail, key = detail) => problems.push({ page, kind, detail, key });

  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!fs.existsSync(executablePath)) {
    throw new Error(
      `${executablePath} not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM=/path/to/chromium`,
    );
  }
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
  try {
    const context = await browser.newContext({ viewport: VIEWPORT });
    await context.route("**/*", async (route) => {
      const url = new URL(route.request().url());
      if (url.origin !== ORIGIN) {
        await route.abort("blockedbyclient");
        return;
      }
      const file = fileFor(root, url.pathname);
      if (!file || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
        await route.fulfill({ status: 404, contentType: "text/plain", body: "not found" });
        return;
      }
      await route.fulfill({ path: file });
    });

    const idsByPage = new Map();
    const linksByPage = new Map();
    const shot = async (page, name) => {
      const file = path.join(out, `${name.replace(/[^A-Za-z0-9._-]/g, "_")}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    };

    for (const name of pages) {
      const page = await context.newPage();
      const before = problems.length;
      page.on("console", (m) => {
        if (m.type() === "error") add(name, "console error", m.text());
      });
      page.on("pageerror", (e) => add(name, "script error", String(e.message || e)));
      page.on("requestfailed", (r) => {
        const url = new URL(r.url());
        if (url.origin !== ORIGIN) add(name, "request outside the book", r.url());
        else add(name, "request failed", `${r.url()}: ${r.failure()?.errorText}`);
      });
      page.on("response", (r) => {
        if (r.status() >= 400) add(name, "HTTP error", `${r.status()} ${r.url()}`);
      });

      await page.goto(`${ORIGIN}/${name}`, { waitUntil: "load", timeout: 30_000 });
      await page.evaluate(() => document.fonts.ready);
      // What a closed <details> holds (the expected tables, which a reader
      // predicts before opening them) is measured as a reader sees it open.
      await page.evaluate(() => document.querySelectorAll("details").forEach((d) => (d.open = true)));
      const m = await page.evaluate(measurePage);
      idsByPage.set(name, new Set(m.ids));
      linksByPage.set(name, m.links);

      // Pictures, the diagrams (book/src/diagrams/*.svg) among them.
      for (const img of m.images) {
        const what = img.src.includes("diagrams/") ? "diagram" : "image";
        if (!img.complete || img.naturalWidth === 0 || img.width <= 0 || img.height <= 0) {
          add(name, `${what} not rendered`, `${img.src}: ${img.width}x${img.height}`);
        } else if (img.right > m.column.right + 1) {
          add(name, `${what} wider than the column`, `${img.src}: ends at ${img.right}px, column at ${m.column.right}px`);
        }
      }
      for (const c of m.code) {
        if (c.overflow > 1 || c.preOverflow > 1 || c.right > m.column.right + 1) {
          add(
            name,
            "code block wider than the column",
            `${c.longest} columns, ${Math.max(c.overflow, c.preOverflow)}px too wide: ${c.first}`,
            c.first,
          );
        }
      }
      if (problems.slice(before).some((p) => !isKnown(p))) await shot(page, name);
      await page.close();
    }

    // Links and anchors, against the pages as the browser built them (mdBook
    // adds some ids with JavaScript).
    const linkPages = new Set();
    for (const [name, links] of linksByPage) {
      for (const { href, url } of links) {
        // A bare "#id" means this page, also on 404.html, whose <base
        // href="/"> makes the browser resolve it against the book's root.
        const u = href.startsWith("#") ? new URL(`${ORIGIN}/${name}${href}`) : new URL(url);
        if (u.origin !== ORIGIN) continue; // external: not fetched here
        const file = fileFor(root, u.pathname);
        if (!file || !fs.existsSync(file)) {
          add(name, "broken link", href);
          linkPages.add(name);
          continue;
        }
        const target = path.relative(root, file).split(path.sep).join("/");
        const fragment = decodeURIComponent(u.hash.replace(/^#/, ""));
        if (fragment && idsByPage.has(target) && !idsByPage.get(target).has(fragment)) {
          add(name, "broken anchor", `${href} (no id "${fragment}" in ${target})`);
          linkPages.add(name);
        }
      }
    }
    for (const name of linkPages) {
      const page = await context.newPage();
      await page.goto(`${ORIGIN}/${name}`, { waitUntil: "load" });
      await shot(page, name);
      await page.close();
    }

    if (search) {
      const page = await context.newPage();
      page.on("pageerror", (e) => add("search", "script error", String(e.message || e)));
      await page.goto(`${ORIGIN}/index.html`, { waitUntil: "load" });
      let hits = [];
      try {
        await page.click("#mdbook-search-toggle");
        // Typed key by key: mdBook searches on keyup.
        await page.locator("#mdbook-searchbar").pressSequentially(search);
        await page.waitForSelector("#mdbook-searchresults li a", { timeout: 10_000 });
        hits = await page.$$eval("#mdbook-searchresults li a", (as) => as.map((a) => a.getAttribute("href")));
      } catch (e) {
        add("search", "search found nothing", `"${search}": ${e.message.split("\n")[0]}`);
      }
      if (hits.length && expectPage && !hits.some((h) => h.split(/[?#]/)[0] === expectPage)) {
        add("search", "search missed the page", `"${search}" found ${hits.join(", ")}, not ${expectPage}`);
      }
      if (problems.some((p) => p.page === "search")) await shot(page, "search");
      await page.close();
    }

    await context.close();
  } finally {
    await browser.close();
  }
  return { pages, problems };
}

// ---------------------------------------------------------------- self-test

// What the fixture book (e2e/browser/fixture) must make the check report:
// each broken thing on bad.html, and the search miss. good.html holds one of
// each thing done right and must report nothing.
const SELF_TEST_EXPECTED = [
  ["bad.html", "broken link", "missing.html"],
  ["bad.html", "broken anchor", "no-such-heading"],
  ["bad.html", "code block wider than the column", "kubectl"],
  ["bad.html", "code block wider than the column", "inside-a-closed-details-block"],
  ["bad.html", "diagram not rendered", "diagrams/zero.svg"],
  ["bad.html", "image not rendered", "missing.png"],
  ["bad.html", "HTTP error", "404"],
  ["bad.html", "console error", "deliberate"],
  ["bad.html", "request outside the book", "example.invalid"],
  ["search", "search found nothing", "automountServiceAccountToken"],
];

async function selfTest(dir, out) {
  const { problems } = await checkBook({
    dir,
    out,
    search: "automountServiceAccountToken",
    expectPage: "good.html",
  });
  const failures = [];
  for (const [page, kind, needle] of SELF_TEST_EXPECTED) {
    if (!problems.some((p) => p.page === page && p.kind === kind && p.detail.includes(needle))) {
      failures.push(`not reported: ${page}: ${kind} (${needle})`);
    }
  }
  for (const p of problems) {
    const expected = SELF_TEST_EXPECTED.some(([page, kind]) => p.page === page && p.kind === kind);
    if (!expected) failures.push(`reported but not broken: ${p.page}: ${p.kind}: ${p.detail}`);
  }
  for (const page of ["good.html", "bad.html"]) {
    const shotFile = path.join(out, `${page}.png`);
    const want = page === "bad.html";
    if (fs.existsSync(shotFile) !== want) {
      failures.push(`${page}: screenshot ${want ? "missing" : "taken although nothing failed"}`);
    }
  }
  return failures;
}

// ---------------------------------------------------------------- main

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.selfTest) {
    const failures = await selfTest(args.dir, args.out);
    if (failures.length) {
      console.error(`✗ the browser check missed deliberate mistakes:\n  ${failures.join("\n  ")}`);
      return 1;
    }
    console.error(`✓ self-test: every deliberate mistake in the fixture book was reported`);
    return 0;
  }
  const known = args.known ? readKnown(args.known) : [];
  const isKnown = (p) => known.some((k) => k.page === p.page && k.kind === p.kind && k.key === p.key);
  const { pages, problems: all } = await checkBook({ ...args, isKnown });
  const problems = all.filter((p) => !isKnown(p));
  const tolerated = all.filter(isKnown);
  const gone = known.filter((k) => !all.some((p) => k.page === p.page && k.kind === p.kind && k.key === p.key));
  const line = (p) => `${p.page}: ${p.kind}: ${p.detail}`;
  const report = problems.map(line);
  for (const k of gone) report.push(`${args.known}:${k.line}: no longer happens, remove it: ${k.page} | ${k.kind} | ${k.key}`);
  fs.writeFileSync(
    path.join(args.out, "problems.txt"),
    [...report, ...tolerated.map((p) => `known: ${line(p)}`)].join("\n") + "\n",
  );
  if (tolerated.length) {
    console.error(`! ${tolerated.length} known problem(s) listed in ${args.known}:\n  ${tolerated.map(line).join("\n  ")}`);
  }
  if (report.length) {
    console.error(`✗ ${report.length} problem(s) in ${pages.length} pages:\n  ${report.join("\n  ")}`);
    console.error(`  screenshots: ${path.resolve(args.out)}`);
    return 1;
  }
  console.error(
    `✓ ${pages.length} pages: no console error, links and anchors resolve, pictures drawn, code fits, search works` +
      (tolerated.length ? ` (apart from the ${tolerated.length} known problem(s) above)` : ""),
  );
  return 0;
}

/** `page | kind | key` lines; `#` starts a comment. */
function readKnown(file) {
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .map((text, i) => ({ text: text.replace(/#.*/, "").trim(), line: i + 1 }))
    .filter(({ text }) => text)
    .map(({ text, line }) => {
      const [page, kind, key] = text.split("|").map((x) => x.trim());
      if (!page || !kind || !key) throw new Error(`${file}:${line}: expected \`page | kind | key\``);
      return { page, kind, key, line };
    });
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`✗ browser check could not run: ${e.message}`);
    process.exit(2);
  },
);
