// Writes small synthetic tokenizers in the exact on-disk forms of GLM-4.7-Flash (HF tokenizer.json) and
// Moonlight / Kimi-K2 (tiktoken.model), and the ids the reference libraries give for 1,331 texts.
//
//   NODE_PATH=/tmp/npmtok/node_modules node tests/gen_glm_kimi_tokenizers.js
//
// (npm install tokenizers tiktoken in /tmp/npmtok; never node_modules in the repository.) Deterministic: running
// it twice gives identical files. tests/data/README.md describes every output; in short:
//   tests/data/glm_tokenizer/                   tokenizer.json (BPE + ByteLevel, GLM's split regex, ignore_merges
//                                               true, merges = every valid split of every token, as transformers'
//                                               TikTokenConverter writes them), tokenizer_config.json (the GLM-4.7
//                                               chat template), generation_config.json (the eos list)
//   tests/data/glm_tokenizer_no_ignore_merges/  the same with "ignore_merges": false
//   tests/data/kimi_tokenizer/                  tiktoken.model + tokenizer_config.json (256 reserved specials,
//                                               the Moonlight chat template)
//   tests/data/kimi_tokenizer_hf/               tokenizer.json converted from tiktoken.model by the one-merge recipe
//   tests/data/tokenizer_glm_fixture.json, tokenizer_glm_no_ignore_merges_fixture.json, tokenizer_kimi_fixture.json
// Oracles: npm `tokenizers` (HF's Rust tokenizers) for GLM and the converted Kimi file; npm `tiktoken` (tiktoken's
// Rust core as WASM, with Kimi's pat_str verbatim and allowed_special "all") for Kimi, whose ids are the expected ones.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { Tiktoken } = require('tiktoken/lite');
const { mixTexts, bytesToUnicode, packageVersion } = require('./fixture_lib.js');

const DATA = path.join(__dirname, 'data');

// GLM-4.7 chat_template.jinja as transcribed in the doc comment of llm_model_templates' GlmPromptFormatter (the
// addendum's [GLM-tpl]; every line the addendum quotes appears in it verbatim). The real file was not read.
const GLM_TEMPLATE = String.raw`[gMASK]<sop>
{%- if tools -%}
<|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value><arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>{%- endif -%}
{%- macro visible_text(content) -%}
    {%- if content is string -%}
        {{- content }}
    {%- elif content is iterable and content is not mapping -%}
        {%- for item in content -%}
            {%- if item is mapping and item.type == 'text' -%}
                {{- item.text }}
            {%- elif item is string -%}
                {{- item }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{- content }}
    {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last_user_index=-1) %}
{%- for m in messages %}
    {%- if m.role == 'user' %}
        {% set ns.last_user_index = loop.index0 -%}
    {%- endif %}
{%- endfor %}
{% for m in messages %}
{%- if m.role == 'user' -%}<|user|>{{ visible_text(m.content) }}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{%- set reasoning_content = '' %}
{%- set content = visible_text(m.content) %}
{%- if m.reasoning_content is string %}
    {%- set reasoning_content = m.reasoning_content %}
{%- else %}
    {%- if '</think>' in content %}
        {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
        {%- set content = content.split('</think>')[-1].lstrip('\n') %}
    {%- endif %}
{%- endif %}
{%- if ((clear_thinking is defined and not clear_thinking) or loop.index0 > ns.last_user_index) and reasoning_content -%}
{{ '<think>' + reasoning_content.strip() +  '</think>'}}
{%- else -%}
{{ '</think>' }}
{%- endif -%}
{%- if content.strip() -%}
{{ content.strip() }}
{%- endif -%}
{% if m.tool_calls %}
{% for tc in m.tool_calls %}
{%- if tc.function %}
    {%- set tc = tc.function %}
{%- endif %}
{{- '<tool_call>' + tc.name -}}
{% set _args = tc.arguments %}{% for k, v in _args.items() %}<arg_key>{{ k }}</arg_key><arg_value>{{ v | tojson(ensure_ascii=False) if v is not string else v }}</arg_value>{% endfor %}</tool_call>{% endfor %}
{% endif %}
{%- elif m.role == 'tool' -%}
{%- if m.content is string -%}
{%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
    {{- '<|observation|>' }}
{%- endif %}
{{- '<tool_response>' }}
{{- m.content }}
{{- '</tool_response>' }}
{%- else -%}
<|observation|>{% for tr in m.content %}
<tool_response>{{ tr.output if tr.output is defined else tr }}</tool_response>{% endfor -%}
{% endif -%}
{%- elif m.role == 'system' -%}
<|system|>{{ visible_text(m.content) }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    <|assistant|>{{- '</think>' if (enable_thinking is defined and not enable_thinking) else '<think>' -}}
{%- endif -%}`;

// Moonlight-16B-A3B-Instruct's chat_template (one line in its tokenizer_config.json), from a tutorial's quotation
// that was re-wrapped for reading: the same tags joined back into one line. The real file was not read.
const MOONLIGHT_TEMPLATE = "{%- for message in messages -%}{%- if loop.first and messages[0]['role'] != 'system' -%}" +
  '<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>{%- endif -%}' +
  "{%- if message['role'] == 'system' -%}<|im_system|>{%- endif -%}" +
  "{%- if message['role'] == 'user' -%}<|im_user|>{%- endif -%}" +
  "{%- if message['role'] == 'assistant' -%}<|im_assistant|>{%- endif -%}" +
  "{{ message['role'] }}<|im_middle|>{{ message['content'] }}<|im_end|>{%- endfor -%}" +
  '{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}';

// transformers' TikTokenConverter default pattern, which llama.cpp transcribes as its CHATGLM4 regex. The real
// GLM-4.7-Flash tokenizer.json was not read; this is the expected string, with \r \n as regex escapes.
const GLM_PATTERN = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" +
  '\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+';
// Kimi's pat_str from tokenization_kimi.py, verbatim (class intersection `&&` included): Oniguruma (HF tokenizers)
// and the Rust regex crate (tiktoken) both accept it, so no rewrite is needed.
const KIMI_PAT_STR = [
  '[\\p{Han}]+',
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
  '\\p{N}{1,3}',
  ' ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*',
  '\\s*[\\r\\n]+',
  '\\s+(?!\\S)',
  '\\s+',
].join('|');

// GLM's added tokens in file order, from id n_base = the size of the BPE vocab (real GLM-4.7-Flash: 154820).
// Offsets 0, 2, 4, 7, 9 are verified for 4.7-Flash, 6, 8, 21, 22 were measured on GLM-5; the rest follow GLM-4.5's
// layout (UNVERIFIED for 4.7-Flash).
const GLM_ADDED = ['<|endoftext|>', '[MASK]', '[gMASK]', '[sMASK]', '<sop>', '<eop>', '<|system|>', '<|user|>',
  '<|assistant|>', '<|observation|>', '<|begin_of_image|>', '<|end_of_image|>', '<|begin_of_video|>',
  '<|end_of_video|>', '<|begin_of_audio|>', '<|end_of_audio|>', '<|begin_of_transcription|>',
  '<|end_of_transcription|>', '<|code_prefix|>', '<|code_middle|>', '<|code_suffix|>', '<think>', '</think>',
  '<tool_call>', '</tool_call>', '<tool_response>', '</tool_response>', '<arg_key>', '</arg_key>', '<arg_value>',
  '</arg_value>', '/nothink', '<|begin_of_box|>', '<|end_of_box|>', '<|image|>', '<|video|>'];
const GLM_EOS = ['<|endoftext|>', '<|user|>', '<|observation|>'];  // config.json eos_token_id, in this order

// Kimi's named specials by offset from n_base (real: 163584); every other slot of the 256 is
// <|reserved_token_{id}|>. Offsets 11-15 and 254-255 are Kimi-K2's.
const KIMI_NAMED = { 0: '[BOS]', 1: '[EOS]', 2: '<|im_end|>', 3: '<|im_user|>', 4: '<|im_assistant|>',
  6: '<|start_header_id|>', 7: '<|end_header_id|>', 9: '[EOT]', 10: '<|im_system|>',
  11: '<|tool_calls_section_begin|>', 12: '<|tool_calls_section_end|>', 13: '<|tool_call_begin|>',
  14: '<|tool_call_argument_begin|>', 15: '<|tool_call_end|>', 17: '<|im_middle|>', 254: '[UNK]', 255: '[PAD]' };
const KIMI_N_SPECIAL = 256;

// ---- texts ----

const identifiers = [
  'getUserName', 'iPhone', 'XMLHttpRequest', 'HTTPServer', 'parseJSONData', 'IOError', 'myVar2Name', 'PascalCase',
  'camelCase', 'snake_case_name', 'SCREAMING_SNAKE_CASE', 'kebab-case-name', 'getElementById', 'innerHTML',
  'URLSearchParams', 'McDonald', 'MacBookPro', 'iOS', 'eBay', 'YouTube', 'OAuth2Client', 'ABCdef', 'abcDEF', 'aBcDeF',
  'ABC', 'A', 'Ab', 'aB', 'HTML5Parser', 'utf8Decode', 'base64URLEncode', 'i18nKey', 'macOS', 'PostgreSQL', 'GraphQL',
  'JavaScript', 'WebAssembly', 'NaN', 'toJSON', 'IPv6Address', 'nOTHING', 'ÀÉÎõü', 'ÉcoleNormale', 'caféCrème',
  'naïveApproach', 'straßeSTRASSE', 'ẞig', 'ΣίσυφοςΚαιΑΘΗΝΑ', 'МоскваМОСКВА', 'ǅemalǈubljana', 'ǅǅǅ', 'aǅb',
  'DŽ dž Dž', 'ʰʱʲ modifiers', 'aʰb', 'ABʰcd', 'xʼy', 'ᏣᎳᎩ ꭰꭱꭲ Cherokee', 'İstanbulIŞIK', 'ﬁnance ﬂow',
  'x\u0301Y\u0301z', 'E\u0301COLE', 'ÉCOLE', 'A\u0301B\u0301c', 'Ⓐⓑ', 'ﬀﬃ', 'ＡＢＣｄｅｆ', 'ＡｂＣ',
  'const userName = getUserName(); if (xmlHttpRequest.readyState === 4) { parseJSON(body); }',
  'class HTTPRequestHandler(BaseHTTPRequestHandler):\n    def do_GET(self) -> None: ...',
  'fn parse_HTTP_header(h: &HTTPHeader) -> Result<JSONValue, IOError>',
  'let iPhoneXSMax = new iOSDevice("iPhoneXSMax"); self.URLSession.dataTask(with: URLRequest)',
  'SELECT UserID, FirstName FROM dbo.UserAccounts WHERE IsActive=1',
  '$scope.ngModelCtrl.$setViewValue(newValue); window.requestAnimationFrame(drawFrame);',
];

const contractions = [
  "don't DON'T Don'T", "HE'S", "SHE'LL", "WE'VE", "I'M", "YOU'RE", "THEY'D", "it's", "It'S", "o'clock", "rock'n'roll",
  "'s", "'S", "'Ll", "'lL", "'RE", "'Ve", "'d", "'D", "'M", "'T", "x'sy", "x's's", "can't've", "y'all", "'twas",
  "the '90s", "Jones'", "'re'", "it’s (curly apostrophe)", "it'ſ (long s)", "IT'ſ", "'ſ", "ain't", "O'Neil",
  "D'Artagnan", "l'homme", "dell'arte", "'quoted'", "HE'S'S", "He's 'S", "I'M'M", "WE'LL'VE", "you'LL", "it'st",
  "'sup", "' s", "''s", "it''s", "JOHN'S BOOK", "NASA's", "iPhone's", "getUser's", "中国's", "123's", "é's", "É'S",
  "'s'", "x'", "'x", "O'REILLY", "don'tcha", "Ma'am", "'ll've", "it'ſall", "'ſa", "IT'ſA", "x'ſt", "'ſ'ſ",
  "'Sup", "'LLama", "'REad", "'VEry", "'Making", "'Dog", "it'sa", "HE'SAID", "dON'Tx", "'ſS", "'ﬆ", "'ﬅ", "'ẞ",
];

const han = [
  '々', '〇', '〇〇〇〇', '一〇二〇年', '人々', 'a々b', '々a', 'a々', '日々Hello', 'A々', '〇a', 'a〇', '1〇2',
  '〡〢〣〤〥〦〧〨〩', '〸〹〺〻', '⺀⺁⺂ radicals ⻳', '⼀⼁⼂⼃ Kangxi ⿕', '㆐㆑㆒ kanbun', '㇀㇁㇂ strokes',
  '𠀀𠀁𠀂 Ext B', '𪜀 Ext C', '𫝀 Ext D', '𫠠 Ext E', '𬺰 Ext F', '𰀀 Ext G', '𱍐 Ext H', '𮯰 Ext I',
  '豈更車 compat', '丽丸乁 compat supplement', '〆ヶ〃', 'ゝゞヽヾ', 'ー', 'カタカナーひらがなー', 'Hello世界',
  '世界Hello', '中文123English', '日本語テキストwithEnglishと数字456', '東京タワーTokyoTower', '漢字かなカナKanji',
  'ｶﾀｶﾅ半角', '한국어와中文', '中,文', '中 文', ' 中文 ', '中\n文', '中文。English.', '\u{16FE2}\u{16FE3}\u{16FF0}\u{16FF1}',
  '二〇二四年一月', '五百', '龥龦鿿', '\u9FFF\u{2A6DF}\u{2A6E0}\u{2A700}', '中a中', 'a中a', '中ab中', 'Ab中Cd',
  '中\u0301', 'a\u0301中', '中々中', '中\u3005\u3007中', '朝日新聞デジタル', 'ひらがなカタカナ漢字ABCabc123',
  '明治3年', '3月15日', '第1回', '中文,English;日本語', '「東京」と「Tokyo」', '我叫John，你呢？',
  'Unicode ideographs: 一丁丂七丄丅丆万丈三上下丌不与丏', '日本語の「ー」は長音符です', '〜～', '々々々', '〻〻',
];

const whitespace2 = [
  'a \r\n', 'a\t\r\n', 'a  \t  \n b', 'x \n\n  y', '  \t\n\t  \n', 'end   ', '\t\tbar', '   \r\n   ', 'a\r\n\r\n\r\nb',
  '\r\r\n', '\n\r', 'a \u3000 b', ' \u00a0\n', 'word\t\n', 'word \t \t\r\n\tnext', 'a' + ' '.repeat(7) + 'b',
  '\u000b\u000c', 'x\u000b\ny', ' \n \n \n', '\t', '\t\t\t', '\t\n', '  \n', '   \n\n', 'a\n  b\n    c\n      d',
  '\r\n\r\n', ' \r\n', '\r\n ', 'x\r\ny\r\n', 'x  \r\n  y', '\n\n\n\n', '    return x;\n}\n\n', ' a', '  a', '   a',
  'a ', 'a  ', ' 1', '  1', ' !', '  !', ' 中', '  中', '\n中', ' é', '  é', '\u2028', '\u2029a', 'a\u0085b',
  '  \u00a0a', '\u00a0 a', '\u3000a', '\u3000\u3000a', '\u200b a', ' \u200b', '\t!', '\t\ta', '\n\t\n\t', ' \t ',
];

const emoji2 = [
  '👩‍🔬', '🧑🏻‍🦰', '🏃‍♀️‍➡️', '🇺🇳', '#️⃣', '*️⃣', '👨🏿‍❤️‍💋‍👨🏻', 'a👍b', 'A👍B', '👍abc', 'ABC👍', '😀😀😀',
  '🙂 ', ' 🙂', '\u{1F9D1}\u200D\u{1F4BB}', '🫨🩷', '🐈‍⬛', 'x\u200dy', '👍🏽👍🏽', 'emoji😀Mixed😀CASE', '🔥abc🔥',
  '1️⃣', '©️®️', '🇯🇵日本', '日本🇯🇵', '👋 hello 👋', '\u{1F600}\u{FE0F}', '❤\uFE0F\u200D\u{1F525}', '🏳️‍⚧️',
];

const marks = [
  'e\u0301', '\u0301', 'n\u0303a', 'Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǫ̗̓', 'क्षत्रिय', 'שָׁלוֹם', 'ABC\u0301def', '\u0301ABC', 'a\u0308\u0301',
  'x\u20dd', 'x\u20e3', 'ﷺ', 'ٱلْعَرَبِيَّة', 'ไทย่', '각', '\u0345', 'A\u0345', '\u0301\u0301a', 'a \u0301b',
  '1\u0301', '!\u0301', '\u0301!', 'Ab\u0301Cd', 'AB\u0301', 'ab\u0301CD', '각', 'ñ Ñ', 'N\u0303', 'ɑ̃', 'i̇',
  'ᬅᬓ᭄ᬱᬭ', 'ཀྵ', '\u0f7f', 'ꦗꦮ', 'ಕನ್ನಡ', 'ᜀᜁ', 'Ǆ\u0301', 'ǅ\u0301a',
];

const specials = [
  '[gMASK]<sop>', '[gMASK]<sop><|system|>You are helpful.<|user|>Hi<|assistant|><think>', 'abc[gMASK]def',
  '<|endoftext|>', 'text<|endoftext|>more', '<|endoftext|', '[gMASK', 'gMASK]', '[MASK][sMASK]', '<sop><eop>',
  '<|user |>', '<|user|><|user|>', '<think></think>', '</think>answer', '<think>\nreason\n</think>\n\nanswer',
  '/nothink', 'a/nothinkb', '/nothing', '/ nothink', 'hello /nothink', '<|observation|>',
  '<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>',
  '<tool_response>{"ok": true}</tool_response>', '<|begin_of_image|><|image|><|end_of_image|>',
  '<|code_prefix|>def f():<|code_middle|>pass<|code_suffix|>', '<|begin_of_box|>1<|end_of_box|>', '<|USER|>',
  '<|im_end|>', '<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>',
  '<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant<|im_middle|>', '[BOS]', '[EOS]',
  '[BOS]Hello[EOS]', '[EOT]', '<|start_header_id|>user<|end_header_id|>', '<|im_end|', '<|im_end|>>', '<<|im_end|>',
  'x<|im_end|>y', '<|im_end|><|im_end|>', ' <|im_end|> ', '\n<|im_middle|>\n',
  '<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}<|tool_call_end|>' +
    '<|tool_calls_section_end|>', '[UNK][PAD]', '<|IM_END|>', '<|im_middle |>', '[bos]', '[ EOS ]',
  '<|reserved_token_0|>', '<|im_user|>用户<|im_middle|>你好<|im_end|>', '[gMASK]<|im_end|><sop>[EOS]',
];

// The texts of the DeepSeek fixture (tests/data/tokenizer_v3_fixture.json, made by gen_tokenizer_fixture.js): prose,
// code, 30 scripts, emoji, whitespace, numbers, Unicode 16 additions, class-edge characters, long runs, and
// ill-formed UTF-8 (as hex). Reused rather than rewritten.
function baseCases() {
  return JSON.parse(fs.readFileSync(path.join(DATA, 'tokenizer_v3_fixture.json'), 'utf8')).cases
    .map((c) => ('text' in c ? { text: c.text } : { bytes_hex: c.bytes_hex }));
}

function generated(count, seed, base) {
  const pools = [identifiers, contractions, han, whitespace2, emoji2, marks, specials, base];
  return mixTexts(count, seed, pools, ['', ' ', '  ', '\n', '\r\n', '\t', ' \n', '\u3000', "'", '.', '_'], 300);
}

// Texts that name this tokenizer's ids, so they can only be written once n_base is known.
function lateTexts(nBase, named) {
  return [`<|reserved_token_${nBase + 5}|>`, `x<|reserved_token_${nBase + 100}|>y`, `<|reserved_token_${nBase + 253}|>`,
    `<|reserved_token_${nBase + 256}|>`, `<|reserved_token_${nBase + 2}|>`, `<|reserved_token_${nBase - 1}|>`,
    `<|reserved_token_${nBase + 16}|><|im_middle|>`, named.slice(0, 24).join(''), named.join(' ')];
}

// The test cases, and the texts the vocabularies are built from: the hand-written ones, without the random mixes
// and the long documents, so the vocabularies stay small.
function allCases() {
  const base = baseCases();
  const baseTexts = base.filter((c) => 'text' in c).map((c) => c.text);
  const written = [...identifiers, ...contractions, ...han, ...whitespace2, ...emoji2, ...marks, ...specials];
  const seen = new Set(baseTexts);
  const fresh = [...written, ...generated(160, 20260412, baseTexts)].filter((t) => !seen.has(t) && seen.add(t));
  const vocabTexts = [...baseTexts.filter((t) => t.length < 2000), ...written];
  return { cases: [...base, ...fresh.map((text) => ({ text }))], vocabTexts };
}

// ---- byte-level bookkeeping ----

const BYTE_CHAR = bytesToUnicode();
// The order of the 256 single-byte tokens: printable bytes first, as in GPT-2 and cl100k, so id != byte value.
const BYTE_ORDER = Array.from({ length: 256 }, (_, b) => b)
  .sort((a, b) => BYTE_CHAR[a].codePointAt(0) - BYTE_CHAR[b].codePointAt(0));

// Tokens are kept as binary strings (one char per byte).
const bin = (s) => Buffer.from(s, 'utf8').toString('latin1');
const hfString = (t) => Array.from(t, (c) => BYTE_CHAR[c.charCodeAt(0)]).join('');
const b64 = (t) => Buffer.from(t, 'latin1').toString('base64');

// tiktoken's byte-pair merge: repeatedly join the adjacent pair whose concatenation has the lowest rank (< maxRank).
function bpe(word, rank, maxRank = Infinity) {
  const parts = Array.from(word);
  while (parts.length > 1) {
    let best = -1, bestRank = maxRank;
    for (let i = 0; i + 1 < parts.length; i++) {
      const r = rank.get(parts[i] + parts[i + 1]);
      if (r !== undefined && r < bestRank) { best = i; bestRank = r; }
    }
    if (best < 0) break;
    parts.splice(best, 2, parts[best] + parts[best + 1]);
  }
  return parts;
}

function splitterFor(pattern) {
  const json = { version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
    post_processor: null, decoder: null, model: { type: 'BPE', vocab: {}, merges: [] } };
  const pre = Tokenizer.fromString(JSON.stringify(json)).getPreTokenizer();
  return (text) => pre.preTokenizeString(text).map(([p]) => p);
}

// The plain-text spans of a text, with the added-token literals cut out (leftmost-longest, as HF and tiktoken do).
function plainSpans(text, specialList) {
  const esc = specialList.slice().sort((a, b) => b.length - a.length).map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  return text.split(new RegExp(esc.join('|'), 'u')).filter((s) => s.length);
}

// A tiktoken-style rank list (array of binary strings, rank = index) built from the texts:
//  1. the 256 bytes;
//  2. `trained` merges learned from the pieces (most frequent pair first);
//  3. piece chains: for every distinct piece of at most CHAIN_MAX bytes, tokens joining its current BPE tokens left
//     to right, so the piece becomes one token and a piece that the engine cuts too finely changes the ids;
//  4. boundary tokens: the concatenation of two adjacent single-token pieces, so a missing cut changes the ids (at
//     most BOUNDARIES_PER_KIND for each kind of cut, see boundaryKind, to keep the vocabulary small).
// A token is added only when tiktoken's BPE bounded by its own rank splits it into exactly two parts (true of
// every multi-byte token of the real Kimi file: 163,328 merges for 163,584 tokens).
const CHAIN_MAX = 16;
const MAX_TOKEN = 48;  // bytes; keeps the repeated-character texts from training 384-byte tokens
const BOUNDARIES_PER_KIND = 4;
const CHAR_CLASSES = [['Han', /\p{Script=Han}/u], ['Lu', /\p{Lu}/u], ['Ll', /\p{Ll}/u], ['Lt', /\p{Lt}/u], ['Lm', /\p{Lm}/u],
  ['Lo', /\p{Lo}/u], ['M', /\p{M}/u], ['Nd', /\p{Nd}/u], ['N', /\p{N}/u], ['CR', /\r/u], ['LF', /\n/u], ['sp', / /u],
  ['ws', /\s/u], ["'", /'/u], ['P', /\p{P}/u], ['S', /\p{S}/u]];
const charClass = (c) => (CHAR_CLASSES.find(([, re]) => re.test(c)) || ['other'])[0];
// What a cut between two pieces looks like: the classes of the characters on both sides of it and at both ends.
function boundaryKind(a, b) {
  const ca = Array.from(Buffer.from(a, 'latin1').toString('utf8')), cb = Array.from(Buffer.from(b, 'latin1').toString('utf8'));
  return [ca[0], ca[ca.length - 1], cb[0], cb[cb.length - 1]].map(charClass).join(' ');
}
function buildRanks(texts, split, specialList, trained) {
  const pieceLists = texts.map((t) => plainSpans(t, specialList).flatMap((s) => split(s).map(bin)));
  const tokens = BYTE_ORDER.map((b) => String.fromCharCode(b));
  const rank = new Map(tokens.map((t, i) => [t, i]));
  const add = (t) => {
    if (rank.has(t)) return true;
    if (t.length > MAX_TOKEN) return false;
    rank.set(t, tokens.length);
    if (bpe(t, rank, tokens.length).length !== 2) { rank.delete(t); return false; }
    tokens.push(t);
    return true;
  };
  const counts = new Map();
  for (const list of pieceLists) for (const p of list) counts.set(p, (counts.get(p) || 0) + 1);
  let words = [...counts].map(([w, c]) => [Array.from(w), c]);
  const refused = new Set();
  for (let m = 0; m < trained;) {
    const pairs = new Map();
    for (const [w, c] of words) for (let i = 0; i + 1 < w.length; i++) {
      const k = w[i] + '\u0100' + w[i + 1];
      if (!refused.has(k)) pairs.set(k, (pairs.get(k) || 0) + c);
    }
    let best = null, bestCount = 1;
    for (const [k, c] of pairs) if (c > bestCount || (c === bestCount && best !== null && k < best)) { best = k; bestCount = c; }
    if (best === null) break;
    const [a, b] = best.split('\u0100');
    if (!add(a + b)) { refused.add(best); continue; }
    m++;
    words = words.map(([w, c]) => {
      const o = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) { o.push(a + b); i++; } else o.push(w[i]);
      }
      return [o, c];
    });
  }
  const nTrained = tokens.length;
  for (const [piece] of counts) {
    if (piece.length > CHAIN_MAX || rank.has(piece)) continue;
    const toks = bpe(piece, rank);
    let prefix = toks[0];
    for (let i = 1; i < toks.length && add(prefix + toks[i]); i++) prefix += toks[i];
  }
  const nChained = tokens.length;
  const perKind = new Map();
  for (const list of pieceLists) {
    for (let i = 0; i + 1 < list.length; i++) {
      const t = list[i] + list[i + 1];
      if (t.length > CHAIN_MAX || !rank.has(list[i]) || !rank.has(list[i + 1])) continue;
      const kind = boundaryKind(list[i], list[i + 1]);
      if ((perKind.get(kind) || 0) < BOUNDARIES_PER_KIND && !rank.has(t) && add(t)) perKind.set(kind, (perKind.get(kind) || 0) + 1);
    }
  }
  console.error(`  ranks: 256 bytes, ${nTrained - 256} trained, ${nChained - nTrained} chain, ${tokens.length - nChained} boundary; ${counts.size} distinct pieces`);
  return { tokens, pieces: counts };
}

// Whole-piece tokens that no merge can build (no split of them into two tokens exists): only a tokenizer that
// emits a piece found whole in the vocab (HF ignore_merges, tiktoken) gives them. Spread through the id range.
function addOrphans(tokens, pieces, count) {
  const have = new Set(tokens);
  const splittable = (p) => {
    for (let i = 1; i < p.length; i++) if (have.has(p.slice(0, i)) && have.has(p.slice(i))) return true;
    return false;
  };
  let chosen = [];
  const cands = [...pieces].filter(([p]) => p.length > CHAIN_MAX && p.length <= 40 && !have.has(p))
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  for (const [p] of cands) {
    if (splittable(p)) continue;
    chosen.push(p);
    have.add(p);
    if (chosen.length === count) break;
  }
  chosen = chosen.filter((p) => !splittable(p));  // a later choice can make an earlier one splittable
  const out = tokens.slice();
  chosen.forEach((p, k) => out.splice(256 + Math.floor(((k + 1) * (out.length - 256)) / (chosen.length + 1)), 0, p));
  return { tokens: out, orphans: chosen };
}

// Kimi only: move some tokens t = l + r (their two-part split) to a rank below both parts. tiktoken still
// builds t from l and r inside a longer piece (the pair's concatenation is in the vocab); the one-merge conversion
// to tokenizer.json cannot record the merge "l r", so HF tokenizers does not. These are the disagreements the
// engine must resolve the tiktoken way.
function addRankInversions(tokens, pieces, count) {
  const rank = new Map(tokens.map((t, i) => [t, i]));
  const inner = new Map();  // token -> how many longer pieces contain it
  const longPieces = [...pieces.keys()].filter((p) => !rank.has(p));
  const out = tokens.slice();
  const candidates = [];
  for (let i = 256; i < tokens.length; i++) {
    const t = tokens[i];
    const text = Buffer.from(t, 'latin1').toString('utf8');
    if (t.length < 4 || !/^ ?[\p{L}\p{M}]+$/u.test(text) || bin(text) !== t) continue;
    const [l, r] = bpe(t, rank, i);
    const before = Math.min(rank.get(l), rank.get(r));
    if (before < 256) continue;  // ranks 0..255 stay the single bytes
    if (!inner.has(t)) inner.set(t, longPieces.filter((p) => p.includes(t)).length);
    if (inner.get(t) >= 1) candidates.push([t, before]);
  }
  // evenly spread over the candidates, so they are not all from the first scripts trained
  const moved = Array.from({ length: Math.min(count, candidates.length) },
    (_, k) => candidates[Math.floor((k * candidates.length) / Math.min(count, candidates.length))]);
  for (const [t, before] of moved) {
    out.splice(out.indexOf(t), 1);
    out.splice(out.indexOf(tokens[before]), 0, t);
  }
  return { tokens: out, inversions: moved.map(([t]) => t) };
}

// ---- GLM ----

// transformers' TikTokenConverter.extract_vocab_merges_from_model: every split (l, r) of every token with l, r in
// the vocab, ordered by the token's rank, then by (rank l, rank r). GLM's real file has 2.1 merges per token
// (321,649 for 154,880); this small vocabulary gets about 1.1, and the extra ones still change hundreds of ids.
function allSplitMerges(tokens) {
  const rank = new Map(tokens.map((t, i) => [t, i]));
  const merges = [];
  tokens.forEach((t) => {
    const local = [];
    for (let i = 1; i < t.length; i++) {
      const l = t.slice(0, i), r = t.slice(i);
      if (rank.has(l) && rank.has(r)) local.push([l, r]);
    }
    local.sort((a, b) => rank.get(a[0]) - rank.get(b[0]) || rank.get(a[1]) - rank.get(b[1]));
    merges.push(...local);
  });
  return merges;
}

function glmTokenizerJson(tokens, ignoreMerges) {
  const vocab = {};
  tokens.forEach((t, i) => { vocab[hfString(t)] = i; });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: GLM_ADDED.map((content, k) => ({ id: tokens.length + k, content, single_word: false, lstrip: false,
      rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: GLM_PATTERN }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: ignoreMerges, vocab,
      merges: allSplitMerges(tokens).map(([l, r]) => `${hfString(l)} ${hfString(r)}`) },
  };
}

function glmConfig(nBase) {
  const decoder = {};
  GLM_ADDED.forEach((content, k) => {
    decoder[nBase + k] = { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  });
  return { added_tokens_decoder: decoder, clean_up_tokenization_spaces: false, do_lower_case: false,
    eos_token: '<|endoftext|>', pad_token: '<|endoftext|>', tokenizer_class: 'PreTrainedTokenizerFast',
    chat_template: GLM_TEMPLATE };
}

// ---- Kimi ----

const kimiSpecialName = (nBase, k) => KIMI_NAMED[k] || `<|reserved_token_${nBase + k}|>`;

function kimiConfig(nBase) {
  const decoder = {};
  for (let k = 0; k < KIMI_N_SPECIAL; k++) {
    decoder[nBase + k] = { content: kimiSpecialName(nBase, k), lstrip: false, normalized: false, rstrip: false,
      single_word: false, special: true };
  }
  return { added_tokens_decoder: decoder, additional_special_tokens: ['<|im_end|>', '<|im_user|>', '<|im_assistant|>',
    '<|start_header_id|>', '<|end_header_id|>', '[EOT]', '<|im_system|>', '<|im_middle|>'],
  auto_map: { AutoTokenizer: ['tokenization_moonshot.TikTokenTokenizer', null] }, bos_token: '[BOS]',
  clean_up_tokenization_spaces: false, eos_token: '[EOS]', pad_token: '[PAD]', unk_token: '[UNK]',
  tokenizer_class: 'TikTokenTokenizer', chat_template: MOONLIGHT_TEMPLATE };
}

// Addendum B.4, from the files alone: vocab[bytes_to_unicode(t)] = rank; for each multi-byte token in rank order,
// bpe(t, max_rank = rank(t)), and when that gives exactly two parts the merge "l r"; ignore_merges true.
function convertTiktoken(modelText, config) {
  const ranks = new Map();
  const lines = modelText.split('\n').filter((l) => l.length);
  lines.forEach((line, i) => {
    const [tok, r] = line.split(' ');
    if (Number(r) !== i) throw new Error(`tiktoken.model: rank ${r} on line ${i + 1} is not dense`);
    ranks.set(Buffer.from(tok, 'base64').toString('latin1'), i);
  });
  for (let b = 0; b < 256; b++) if (!ranks.has(String.fromCharCode(b))) throw new Error(`byte ${b} missing`);
  const vocab = {};
  const merges = [];
  for (const [t, r] of ranks) {
    vocab[hfString(t)] = r;
    if (t.length < 2) continue;
    const parts = bpe(t, ranks, r);
    if (parts.length === 2) merges.push(parts.map(hfString));
  }
  const added = Object.entries(config.added_tokens_decoder).map(([id, a]) => ({ id: Number(id), content: a.content,
    single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: KIMI_PAT_STR }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: true, vocab, merges },
  };
}

// ---- oracles ----

const caseText = (c) => ('text' in c ? c.text : Buffer.from(c.bytes_hex, 'hex').toString('utf8'));
const caseKey = (c) => ('text' in c ? { text: c.text } : { bytes_hex: c.bytes_hex });

async function hfEncodeAll(tok, cases) {
  const out = [];
  for (const c of cases) {
    const ids = Array.from((await tok.encode(caseText(c), null, { addSpecialTokens: false })).getIds());
    out.push({ ids, decoded: await tok.decode(ids, false) });
  }
  return out;
}

function tiktokenEncodeAll(enc, cases) {
  return cases.map((c) => {
    const ids = Array.from(enc.encode(caseText(c), 'all'));
    return { ids, decoded: Buffer.from(enc.decode(Uint32Array.from(ids))).toString('utf8') };
  });
}

function checkRoundTrip(name, cases, results) {
  const bad = cases.filter((c, i) => results[i].decoded !== caseText(c));
  if (bad.length) throw new Error(`${name}: decode(encode(x)) != x for ${bad.length} texts, e.g. ${JSON.stringify(caseText(bad[0])).slice(0, 80)}`);
}

const write = (file, obj, indent = 0) => fs.writeFileSync(file, JSON.stringify(obj, null, indent) + '\n');

function fixtureCases(cases, results, extra = () => ({})) {
  return cases.map((c, i) => ({ ...caseKey(c), ids: results[i].ids,
    decoded: results[i].decoded, ...extra(i) }));
}

async function main() {
  const tokVersion = packageVersion('tokenizers');
  const ttVersion = packageVersion('tiktoken');
  const { cases, vocabTexts: train } = allCases();

  // GLM
  const glmBuilt = buildRanks(train, splitterFor(GLM_PATTERN), GLM_ADDED, 1000);
  const glm = addOrphans(glmBuilt.tokens, glmBuilt.pieces, 40);
  const nGlm = glm.tokens.length;
  const glmCases = [...cases, ...lateTexts(nGlm, GLM_ADDED).map((text) => ({ text }))];
  const glmDirs = [['glm', 'glm_tokenizer', true], ['glm_no_ignore_merges', 'glm_tokenizer_no_ignore_merges', false]];
  const glmIds = {};
  for (const [name, dirName, ignoreMerges] of glmDirs) {
    const dir = path.join(DATA, dirName);
    fs.mkdirSync(dir, { recursive: true });
    const json = glmTokenizerJson(glm.tokens, ignoreMerges);
    write(path.join(dir, 'tokenizer.json'), json);
    write(path.join(dir, 'tokenizer_config.json'), glmConfig(nGlm), 1);
    write(path.join(dir, 'generation_config.json'), { eos_token_id: GLM_EOS.map((s) => nGlm + GLM_ADDED.indexOf(s)),
      pad_token_id: nGlm }, 2);
    const tok = Tokenizer.fromFile(path.join(dir, 'tokenizer.json'));
    const res = await hfEncodeAll(tok, glmCases);
    checkRoundTrip(name, glmCases, res);
    glmIds[name] = res;
    write(path.join(DATA, `tokenizer_${name}_fixture.json`), {
      source: `tests/data/${dirName}/tokenizer.json (synthetic; made by tests/gen_glm_kimi_tokenizers.js)`,
      oracle: `npm tokenizers ${tokVersion}`, pattern: GLM_PATTERN, ignore_merges: ignoreMerges, n_base: nGlm,
      n_vocab: nGlm + GLM_ADDED.length, n_merges: json.model.merges.length,
      added_tokens: Object.fromEntries(GLM_ADDED.map((s, k) => [s, nGlm + k])),
      eos_token_ids: GLM_EOS.map((s) => nGlm + GLM_ADDED.indexOf(s)), bos_token_id: null,
      orphans: glm.orphans.map((t) => Buffer.from(t, 'latin1').toString('utf8')),
      cases: fixtureCases(glmCases, res) });
    console.error(`${name}: vocab ${nGlm} + ${GLM_ADDED.length} added, ${json.model.merges.length} merges, ` +
      `${glmCases.length} cases`);
  }
  const differ = glmCases.filter((c, i) => glmIds.glm[i].ids.join() !== glmIds.glm_no_ignore_merges[i].ids.join());
  console.error(`ignore_merges true vs false: ${differ.length} texts get different ids`);

  // Kimi
  const kimiSpecials = Array.from({ length: KIMI_N_SPECIAL }, (_, k) => KIMI_NAMED[k] || `<|reserved_token_${k}|>`);
  const kimiBuilt = buildRanks(train, splitterFor(KIMI_PAT_STR), kimiSpecials, 1000);
  const inv = addRankInversions(kimiBuilt.tokens, kimiBuilt.pieces, 16);
  const kimi = addOrphans(inv.tokens, kimiBuilt.pieces, 25);
  const nKimi = kimi.tokens.length;
  const kimiDir = path.join(DATA, 'kimi_tokenizer');
  const kimiHfDir = path.join(DATA, 'kimi_tokenizer_hf');
  fs.mkdirSync(kimiDir, { recursive: true });
  fs.mkdirSync(kimiHfDir, { recursive: true });
  const modelText = kimi.tokens.map((t, i) => `${b64(t)} ${i}`).join('\n') + '\n';
  fs.writeFileSync(path.join(kimiDir, 'tiktoken.model'), modelText);
  const config = kimiConfig(nKimi);
  write(path.join(kimiDir, 'tokenizer_config.json'), config, 1);
  // The converter reads only the two files just written.
  const hfJson = convertTiktoken(fs.readFileSync(path.join(kimiDir, 'tiktoken.model'), 'utf8'),
    JSON.parse(fs.readFileSync(path.join(kimiDir, 'tokenizer_config.json'), 'utf8')));
  write(path.join(kimiHfDir, 'tokenizer.json'), hfJson);

  const specialIds = {};
  for (let k = 0; k < KIMI_N_SPECIAL; k++) specialIds[kimiSpecialName(nKimi, k)] = nKimi + k;
  const enc = new Tiktoken(fs.readFileSync(path.join(kimiDir, 'tiktoken.model'), 'utf8'), specialIds, KIMI_PAT_STR);
  const named = Object.values(KIMI_NAMED);
  const kimiCases = [...cases, ...lateTexts(nKimi, named).map((text) => ({ text }))];
  const tt = tiktokenEncodeAll(enc, kimiCases);
  checkRoundTrip('kimi tiktoken', kimiCases, tt);
  const hf = await hfEncodeAll(Tokenizer.fromFile(path.join(kimiHfDir, 'tokenizer.json')), kimiCases);
  checkRoundTrip('kimi tokenizers', kimiCases, hf);
  const disagree = kimiCases.map((c, i) => i).filter((i) => tt[i].ids.join() !== hf[i].ids.join());
  // For comparison only (not written): the same file with TikTokenConverter's every-split merges instead.
  const allSplits = { ...hfJson, model: { ...hfJson.model, merges: allSplitMerges(kimi.tokens).map(([l, r]) => [hfString(l), hfString(r)]) } };
  const hfAll = await hfEncodeAll(Tokenizer.fromString(JSON.stringify(allSplits)), kimiCases);
  const disagreeAll = kimiCases.filter((c, i) => tt[i].ids.join() !== hfAll[i].ids.join()).length;

  // tokenization_kimi.py cuts runs of more than 25,000 whitespace / non-whitespace characters before tiktoken
  const longRun = '123'.repeat(8336);
  const wrapper = [{ text_repeat: ['123', 8336], note: '25,008 digits: tokenization_kimi.py encodes the first 25,000 ' +
    'and the last 8 separately, so the cut falls inside a 3-digit piece',
    tiktoken_ids: Array.from(enc.encode(longRun, 'all')),
    kimi_wrapper_ids: [...enc.encode(longRun.slice(0, 25000), 'all'), ...enc.encode(longRun.slice(25000), 'all')] }];
  write(path.join(DATA, 'tokenizer_kimi_fixture.json'), {
    source: 'tests/data/kimi_tokenizer/tiktoken.model + tokenizer_config.json (synthetic; made by ' +
      'tests/gen_glm_kimi_tokenizers.js); hf_ids from tests/data/kimi_tokenizer_hf/tokenizer.json',
    oracle: `npm tiktoken ${ttVersion} (ids, allowed_special "all"); npm tokenizers ${tokVersion} (hf_ids)`,
    pat_str: KIMI_PAT_STR, n_base: nKimi, n_special: KIMI_N_SPECIAL, n_vocab: nKimi + KIMI_N_SPECIAL,
    n_merges_hf: hfJson.model.merges.length, special_tokens: Object.fromEntries(named.map((s) => [s, specialIds[s]])),
    eos_token_ids: [specialIds['<|im_end|>']], bos_token_id: null,
    rank_inversions: inv.inversions.map((t) => Buffer.from(t, 'latin1').toString('utf8')),
    orphans: kimi.orphans.map((t) => Buffer.from(t, 'latin1').toString('utf8')),
    disagreements: disagree.length, disagreements_with_every_split_merges: disagreeAll,
    cases: fixtureCases(kimiCases, tt, (i) => (disagree.includes(i) ? { hf_ids: hf[i].ids } : {})),
    kimi_wrapper_cases: wrapper });
  console.error(`kimi: ${nKimi} ranks + ${KIMI_N_SPECIAL} specials, ${hfJson.model.merges.length} HF merges, ` +
    `${kimiCases.length} cases, tiktoken vs tokenizers disagree on ${disagree.length} ` +
    `(${disagreeAll} with every-split merges)`);
  for (const i of disagree.slice(0, 8)) {
    console.error(`  ${JSON.stringify(caseText(kimiCases[i])).slice(0, 60)}  tiktoken ${tt[i].ids.slice(0, 12)}  hf ${hf[i].ids.slice(0, 12)}`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
