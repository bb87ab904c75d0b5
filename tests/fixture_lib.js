// Helpers shared by the fixture generators (tests/gen_*.js).
'use strict';
const fs = require('fs');
const path = require('path');

// A small deterministic PRNG (mulberry32) so the fixtures are reproducible.
function rng(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6D2B79F5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// `count` texts, each 2..5 random entries of random pools joined by random separators. An entry longer than maxPiece
// UTF-16 units is cut to its start; 30% of the entries are then cut to a random slice, to break words and
// multi-character sequences in odd places.
function mixTexts(count, seed, pools, seps, maxPiece = Infinity) {
  const r = rng(seed);
  const out = [];
  for (let i = 0; i < count; i++) {
    const k = 2 + Math.floor(r() * 4);
    let s = '';
    for (let j = 0; j < k; j++) {
      const pool = pools[Math.floor(r() * pools.length)];
      let piece = pool[Math.floor(r() * pool.length)];
      if (piece.length > maxPiece) piece = piece.slice(0, maxPiece);
      if (r() < 0.3) {
        const chars = Array.from(piece);
        const a = Math.floor(r() * chars.length), b = a + 1 + Math.floor(r() * (chars.length - a));
        piece = chars.slice(a, b).join('');
      }
      s += (j ? seps[Math.floor(r() * seps.length)] : '') + piece;
    }
    out.push(s);
  }
  return out;
}

// GPT-2's bytes_to_unicode: table[b] is the character that byte b stands for in a byte-level tokenizer.json vocab.
function bytesToUnicode() {
  const keep = [];
  for (let b = 0x21; b <= 0x7e; b++) keep.push(b);
  for (let b = 0xa1; b <= 0xac; b++) keep.push(b);
  for (let b = 0xae; b <= 0xff; b++) keep.push(b);
  const table = [];
  let n = 0;
  for (let b = 0; b < 256; b++) table[b] = keep.includes(b) ? String.fromCodePoint(b) : String.fromCodePoint(256 + n++);
  return table;
}

// The version of an npm package found on NODE_PATH.
function packageVersion(name) {
  for (const d of (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean)) {
    const p = path.join(d, name, 'package.json');
    if (fs.existsSync(p)) return JSON.parse(fs.readFileSync(p, 'utf8')).version;
  }
  throw new Error(`${name} not found (set NODE_PATH)`);
}

module.exports = { rng, mixTexts, bytesToUnicode, packageVersion };
