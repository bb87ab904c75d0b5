// Writes tests/data/chat_glm_kimi_fixture.json: the GLM-4.7 and Moonlight chat templates (from the tokenizer_config.json
// files tests/gen_glm_kimi_tokenizers.js wrote) rendered by npm @huggingface/jinja, with the ids of every rendering.
//
//   NODE_PATH=/tmp/npmtok/node_modules node tests/gen_glm_kimi_chat_fixture.js   (after gen_glm_kimi_tokenizers.js)
//
// "renderings": whole conversations rendered once, as apply_chat_template(..., tokenize=False) would.
// "conversations": what -m chat feeds per user turn when it keeps the KV cache: turn k's text is the rendering up to
// user turn k (with the generation prompt) minus the rendering up to the previous reply (without the prompt). See
// tests/data/README.md for what the engine must do with the stop token and the thinking block.
// Ids: GLM from npm tokenizers on tests/data/glm_tokenizer (ignore_merges true); Kimi from npm tiktoken on
// tests/data/kimi_tokenizer, with "hf_ids" from tests/data/kimi_tokenizer_hf where npm tokenizers differs.
'use strict';
const fs = require('fs');
const path = require('path');
const { Template } = require('@huggingface/jinja');
const { Tokenizer } = require('tokenizers');
const { Tiktoken } = require('tiktoken/lite');
const { packageVersion } = require('./fixture_lib.js');

const DATA = path.join(__dirname, 'data');
const readJson = (...p) => JSON.parse(fs.readFileSync(path.join(DATA, ...p), 'utf8'));

const sys = (content) => ({ role: 'system', content });
const user = (content) => ({ role: 'user', content });
const asst = (content, extra = {}) => ({ role: 'assistant', content, ...extra });

// Whole conversations: [name, messages, template kwargs, add_generation_prompt]
const GLM_RENDERINGS = [
  ['system_user', [sys('You are a terse assistant.'), user('Name a colour.')], {}, true],
  ['system_user_no_think', [sys('You are a terse assistant.'), user('Name a colour.')], { enable_thinking: false }, true],
  ['user_only', [user('What is 12 + 30?')], {}, true],
  ['user_only_no_think', [user('What is 12 + 30?')], { enable_thinking: false }, true],
  ['multi_turn', [sys('Be brief.'), user('Hi!'), asst('Hello! How can I help?'), user('再说一个。')], {}, true],
  ['multi_turn_no_think', [sys('Be brief.'), user('Hi!'), asst('Hello! How can I help?'), user('再说一个。')],
    { enable_thinking: false }, true],
  ['past_reasoning_dropped', [user('2+2?'), asst('<think>\nTwo plus two.\n</think>\n\n4'), user('And 3+3?')], {}, true],
  ['reasoning_after_last_user_kept', [user('2+2?'), asst('4', { reasoning_content: 'Two plus two.' })], {}, false],
  ['clear_thinking_false', [user('2+2?'), asst('4', { reasoning_content: 'Two plus two.' }), user('And 3+3?')],
    { clear_thinking: false }, true],
  ['content_kept_verbatim', [sys('  spaced system\n'), user('  Hi <|user|> [gMASK] /nothink \r\n'),
    asst('  padded reply  \n'), user('\tlast\n')], {}, true],
];
const MOONLIGHT_RENDERINGS = [
  ['system_user', [sys('You are a terse assistant.'), user('Name a colour.')], {}, true],
  ['user_only_default_system', [user('What is 12 + 30?')], {}, true],
  ['multi_turn', [sys('Be brief.'), user('Hi!'), asst('Hello! How can I help?'), user('再说一个。')], {}, true],
  ['multi_turn_default_system', [user('Hi!'), asst('Hello! How can I help?'), user('再说一个。')], {}, true],
  ['no_generation_prompt', [user('Hi!'), asst('Hello!')], {}, false],
  ['content_kept_verbatim', [sys('  spaced system\n'), user('  Hi <|im_end|> [EOS] \r\n')], {}, true],
];

// Per-turn texts: [name, system or null, users, replies, kwargs]
const USERS = ['Hello there!', 'What is 12 + 30?', 'Thanks. 谢谢！'];
const REPLIES = ['Hi! How can I help?', '42.'];
const CONVERSATIONS = [
  ['no_system', null, USERS, REPLIES, {}],
  ['system', 'You are a terse assistant.', USERS, REPLIES, {}],
  ['system_no_think', 'You are a terse assistant.', USERS, REPLIES, { enable_thinking: false }],
];

function turnTexts(template, system, users, replies, kwargs) {
  const render = (messages, gen) => template.render({ messages, add_generation_prompt: gen, ...kwargs });
  const messages = system ? [sys(system)] : [];
  const texts = [], matches = [];
  let prompt = '';
  users.forEach((u, k) => {
    let before = '';
    if (k > 0) {
      messages.push(asst(replies[k - 1]));
      before = render(messages, false);
    }
    messages.push(user(u));
    const full = render(messages, true);
    if (!full.startsWith(before)) throw new Error('the rendering up to a reply is not a prefix of the next one');
    texts.push(full.slice(before.length));
    matches.push(k === 0 || before.startsWith(prompt));
    prompt = full;
  });
  return { turn_texts: texts, history_matches_cache: matches };
}

async function main() {
  const glmCfg = readJson('glm_tokenizer', 'tokenizer_config.json');
  const kimiCfg = readJson('kimi_tokenizer', 'tokenizer_config.json');
  const glmTok = Tokenizer.fromFile(path.join(DATA, 'glm_tokenizer', 'tokenizer.json'));
  const kimiHf = Tokenizer.fromFile(path.join(DATA, 'kimi_tokenizer_hf', 'tokenizer.json'));
  const specials = {};
  for (const [id, a] of Object.entries(kimiCfg.added_tokens_decoder)) specials[a.content] = Number(id);
  const patStr = readJson('tokenizer_kimi_fixture.json').pat_str;
  const tiktoken = new Tiktoken(fs.readFileSync(path.join(DATA, 'kimi_tokenizer', 'tiktoken.model'), 'utf8'), specials, patStr);

  const hfIds = async (tok, text) => Array.from((await tok.encode(text, null, { addSpecialTokens: false })).getIds());
  const ids = {
    glm: async (text) => ({ ids: await hfIds(glmTok, text) }),
    moonlight: async (text) => {
      const tt = Array.from(tiktoken.encode(text, 'all'));
      const hf = await hfIds(kimiHf, text);
      return tt.join() === hf.join() ? { ids: tt } : { ids: tt, hf_ids: hf };
    },
  };
  const families = [
    ['glm', new Template(glmCfg.chat_template), GLM_RENDERINGS],
    ['moonlight', new Template(kimiCfg.chat_template), MOONLIGHT_RENDERINGS],
  ];
  const renderings = [], conversations = [];
  for (const [family, template, list] of families) {
    for (const [name, messages, kwargs, gen] of list) {
      const text = template.render({ messages, add_generation_prompt: gen, ...kwargs });
      renderings.push({ family, name, messages, kwargs, add_generation_prompt: gen, text, ...(await ids[family](text)) });
    }
    for (const [name, system, users, replies, kwargs] of CONVERSATIONS) {
      if (family === 'moonlight' && Object.keys(kwargs).length) continue;
      const t = turnTexts(template, system, users, replies, kwargs);
      const turnIds = [];
      for (const text of t.turn_texts) turnIds.push(await ids[family](text));
      conversations.push({ family, name, system, users, replies, kwargs, ...t, turn_ids: turnIds.map((x) => x.ids),
        ...(turnIds.some((x) => x.hf_ids) ? { turn_hf_ids: turnIds.map((x) => x.hf_ids || x.ids) } : {}) });
    }
  }
  const out = path.join(DATA, 'chat_glm_kimi_fixture.json');
  fs.writeFileSync(out, JSON.stringify({
    oracle: `npm @huggingface/jinja ${packageVersion('@huggingface/jinja')} (trim_blocks and lstrip_blocks, as ` +
      `transformers renders); ids: npm tokenizers ${packageVersion('tokenizers')}, npm tiktoken ${packageVersion('tiktoken')}`,
    templates: { glm: 'tests/data/glm_tokenizer/tokenizer_config.json chat_template',
      moonlight: 'tests/data/kimi_tokenizer/tokenizer_config.json chat_template' },
    renderings, conversations }, null, 1) + '\n');
  console.error(`wrote ${renderings.length} renderings and ${conversations.length} conversations to ${out}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
