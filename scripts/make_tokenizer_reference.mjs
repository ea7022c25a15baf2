// Writes reference token ids for tests/io/test_tokenizer.cpp with the JavaScript port of Hugging Face
// tokenizers (npm package @huggingface/tokenizers), so the C++ tokenizer is checked against an independent
// implementation.
//
// Usage (see tests/data/tokenizer/README.md for the exact command that made the committed fixture):
//   node scripts/make_tokenizer_reference.mjs TOKENIZER_JSON TOKENIZER_CONFIG_JSON OUT.jsonl TEXT_FILE...
//
// Every output line is a JSON object:
//   {"text": s, "ids": encode(s) without special tokens,
//    "ids_metaspace": the same with the tokenizer rewritten to the Metaspace pre-tokenizer form (normalizer null,
//    Metaspace prepend_scheme "first"); present only where it differs from "ids",
//    "decoded": decode(ids) keeping special tokens; present only where it differs from "text"}
// The texts are lines and multi-line pieces of the TEXT_FILEs plus generated text (a fixed-seed generator):
// Unicode from many scripts, emoji sequences, whitespace runs, control characters, characters missing from the
// vocabulary (byte fallback) and the special tokens' spellings.
import fs from "fs";
import { createRequire } from "module";

const require = createRequire(import.meta.url);
const { Tokenizer } = require(require.resolve("@huggingface/tokenizers", { paths: [process.cwd()] }));

const [tokenizerPath, configPath, outPath, ...textFiles] = process.argv.slice(2);
if (!tokenizerPath || !configPath || !outPath || textFiles.length === 0) {
  console.error("usage: make_tokenizer_reference.mjs TOKENIZER_JSON TOKENIZER_CONFIG_JSON OUT.jsonl TEXT_FILE...");
  process.exit(2);
}
const tokenizerJson = JSON.parse(fs.readFileSync(tokenizerPath, "utf8"));
const tokenizerConfig = JSON.parse(fs.readFileSync(configPath, "utf8"));
const tok = new Tokenizer(tokenizerJson, tokenizerConfig);

const metaspaceJson = structuredClone(tokenizerJson);
metaspaceJson.normalizer = null;
metaspaceJson.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
const tokMetaspace = new Tokenizer(metaspaceJson, tokenizerConfig);

// Mulberry32: a small deterministic generator, so the fixture can be made again byte for byte.
let seed = 0x5eed1234;
function rand() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (a) => a[Math.floor(rand() * a.length)];
const range = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const cp = (lo, hi) => String.fromCodePoint(range(lo, hi));

const texts = [];

// Text files: single lines (trailing whitespace kept) and runs of 2-6 lines joined with their newlines.
for (const file of textFiles) {
  const lines = fs.readFileSync(file, "utf8").split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].length > 0 && rand() < 0.6) texts.push(lines[i]);
    if (rand() < 0.08) texts.push(lines.slice(i, i + range(2, 6)).join("\n"));
  }
}

// Generated text.
const scripts = [
  () => cp(0x61, 0x7a),                     // ASCII letters
  () => cp(0x30, 0x39),                     // digits
  () => cp(0x21, 0x2f),                     // ASCII punctuation
  () => cp(0xc0, 0x17f),                    // Latin-1 and Latin Extended-A
  () => cp(0x391, 0x3c9),                   // Greek
  () => cp(0x410, 0x44f),                   // Cyrillic
  () => cp(0x5d0, 0x5ea),                   // Hebrew
  () => cp(0x627, 0x64a),                   // Arabic
  () => cp(0x905, 0x939),                   // Devanagari
  () => cp(0xe01, 0xe2e),                   // Thai
  () => cp(0x3041, 0x3096),                 // Hiragana
  () => cp(0x30a1, 0x30fa),                 // Katakana
  () => cp(0x4e00, 0x9fff),                 // CJK unified ideographs (many fall back to bytes)
  () => cp(0xac00, 0xd7a3),                 // Hangul syllables
  () => cp(0x20000, 0x2a6df),               // CJK extension B (4-byte UTF-8, byte fallback)
  () => cp(0x1f600, 0x1f64f),               // emoji faces
  () => cp(0x1f300, 0x1f5ff),               // pictographs
  () => cp(0x2200, 0x22ff),                 // mathematical operators
  () => cp(0x2500, 0x257f),                 // box drawing
  () => cp(0xe000, 0xf8ff),                 // private use
  () => cp(0xf0000, 0xffffd),               // supplementary private use
  () => cp(0x300, 0x36f),                   // combining marks
  () => pick(["\u200b", "\u200d", "\ufeff", "\u00a0", "\u3000", "\u2028", "\u00ad", "\u{10ffff}", "\u{e0001}"]),
  () => pick(["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x9f"]),
  () => pick(["👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇩🇪", "🇯🇵", "❤️", "🧑🏿‍💻", "e\u0301", "n\u0303"]),
  () => pick(["\u2581", "\u2581\u2581", "<s>", "</s>", "<unk>", "<0x41>", "<s", "s>", "</", "<<s>>"]),
];
const spaces = () => pick([" ", " ", " ", "  ", "   ", "    ", "        ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \t ", "\u3000"]);

for (let i = 0; i < 900; i++) {
  const words = range(1, 14);
  let s = rand() < 0.2 ? spaces() : "";
  for (let w = 0; w < words; w++) {
    const gen = pick(scripts);
    const len = range(1, 8);
    for (let c = 0; c < len; c++) s += gen();
    if (w + 1 < words || rand() < 0.2) s += rand() < 0.75 ? " " : spaces();
  }
  texts.push(s);
}

// Whitespace runs between ASCII words, and lines made only of whitespace.
const asciiWords = ["the", "retention", "state", "x", "a", "int", "return", "for", "(i = 0;", "{", "}", "//", "==", "0.5f"];
for (let i = 0; i < 300; i++) {
  let s = rand() < 0.5 ? spaces() : "";
  const n = range(1, 10);
  for (let w = 0; w < n; w++) s += pick(asciiWords) + (w + 1 < n ? spaces() + (rand() < 0.3 ? spaces() : "") : "");
  if (rand() < 0.3) s += spaces();
  texts.push(s);
}
for (let i = 0; i < 40; i++) {
  let s = "";
  const n = range(1, 6);
  for (let k = 0; k < n; k++) s += spaces();
  texts.push(s);
}

// Edge cases.
texts.push("", " ", "  ", "\n", "\t", "\u2581", "\u2581\u2581x", " \u2581 ", "<s>", "</s>", "<unk>", "<s><s>", "a<s>b",
           " <s> x</s>y<unk>", "<s> ", " </s>", "<0x41>", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
           " ".repeat(100), "\n".repeat(20), "ab".repeat(50), "1234567890".repeat(5), "🙂".repeat(30),
           "\u{20000}\u{20001}\u{20002}", "Hello, world!", "Hello world", " Hello world", "hello  world ");

const seen = new Set();
const out = [];
for (const text of texts) {
  if (seen.has(text)) continue;
  seen.add(text);
  const ids = tok.encode(text, { add_special_tokens: false }).ids;
  const withBos = tok.encode(text, { add_special_tokens: true }).ids;
  if (withBos.length !== ids.length + 1 || withBos[0] !== 1 || withBos.slice(1).some((v, k) => v !== ids[k])) {
    throw new Error(`add_special_tokens does not just prepend <s> for ${JSON.stringify(text)}`);
  }
  const idsMetaspace = tokMetaspace.encode(text, { add_special_tokens: false }).ids;
  const decoded = ids.length === 0 ? "" : tok.decode(ids, { skip_special_tokens: false });
  const entry = { text, ids };
  if (idsMetaspace.length !== ids.length || idsMetaspace.some((v, k) => v !== ids[k])) entry.ids_metaspace = idsMetaspace;
  if (decoded !== text) entry.decoded = decoded;
  out.push(JSON.stringify(entry));
}
fs.writeFileSync(outPath, out.join("\n") + "\n");
console.error(`wrote ${out.length} texts to ${outPath}`);
