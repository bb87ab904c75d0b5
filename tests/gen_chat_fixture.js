// Writes tests/data/chat_fixture.json: chat templates rendered by a real Jinja engine (npm
// @huggingface/jinja, the one transformers.js uses), cut into the text each user turn adds.
//
//   NODE_PATH=/tmp/npmtok/node_modules node tests/gen_chat_fixture.js
//
// run.c's chat keeps the KV cache across turns, so it never renders the whole conversation; it feeds, per
// user turn, only the text that turn adds (the assistant's reply is the sampled tokens plus the closing
// end-of-sentence token). This fixture is that per-turn text as the template itself renders it: turn k's
// text is the rendering of the conversation up to user turn k (with the generation prompt), minus the
// rendering up to the previous generation prompt, the assistant's reply and the end-of-sentence token.
'use strict';
const fs = require('fs');
const path = require('path');

const BOS = '<｜begin▁of▁sentence｜>';
const EOS = '<｜end▁of▁sentence｜>';

function findPackageFile(...parts) {
  const dirs = (process.env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
  for (const d of dirs) if (fs.existsSync(path.join(d, ...parts))) return path.join(d, ...parts);
  throw new Error(`${parts.join('/')} not found (set NODE_PATH)`);
}

// Spec §6.5, DeepSeek-V2-Chat.
const V2_TEMPLATE = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}" +
  "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}" +
  "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

const conversations = [
  { system: null, users: ['Hello there!', 'What is 12 + 30?', 'Thanks.'] },
  { system: 'You are a terse assistant.', users: ['Name a colour.', '再说一个。'] },
];
const replies = ['Hi! How can I help?', '42.', 'You are welcome.'];

function turnTexts(template, system, users) {
  const render = (messages) => template.render({ messages, add_generation_prompt: true, bos_token: BOS, eos_token: EOS });
  const messages = system ? [{ role: 'system', content: system }] : [];
  const texts = [];
  let before = '';
  users.forEach((u, k) => {
    if (k > 0) messages.push({ role: 'assistant', content: replies[k - 1] });
    messages.push({ role: 'user', content: u });
    const full = render(messages);
    if (!full.startsWith(before)) throw new Error('rendering is not incremental');
    const cut = k === 0 ? 0 : full.indexOf(EOS, before.length) + EOS.length;
    if (k > 0 && full.slice(before.length, cut).trim() !== replies[k - 1] + EOS) throw new Error('unexpected reply rendering');
    texts.push(full.slice(cut));
    before = full;
  });
  return texts;
}

async function main() {
  const { Template } = require('@huggingface/jinja');
  const v3cfg = JSON.parse(fs.readFileSync(findPackageFile('@lenml', 'tokenizer-deepseek_v3', 'models', 'tokenizer_config.json'), 'utf8'));
  const templates = [['deepseek_v3', v3cfg.chat_template], ['deepseek_v2', V2_TEMPLATE]];
  const cases = [];
  for (const [family, source] of templates) {
    const template = new Template(source);
    for (const c of conversations) cases.push({ family, template: source, system: c.system, users: c.users,
      turn_texts: turnTexts(template, c.system, c.users) });
  }
  const version = require(findPackageFile('@huggingface', 'jinja', 'package.json')).version;
  const out = path.join(__dirname, 'data', 'chat_fixture.json');
  fs.writeFileSync(out, JSON.stringify({ oracle: `npm @huggingface/jinja ${version}`, cases }, null, 1) + '\n');
  console.error(`wrote ${cases.length} conversations to ${out}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
