// retnet::io::Tokenizer against reference ids from Hugging Face's tokenizers (the JavaScript port; see
// tests/data/tokenizer/README.md), plus round trips, special tokens, streaming decode and malformed input.
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "retnet/io/tokenizer.hpp"

using retnet::io::StreamDecoder;
using retnet::io::Tokenizer;
using Ids = std::vector<std::int64_t>;

namespace {

const std::string kDir = std::string(RETNET_TEST_DATA_DIR) + "/tokenizer";

const nlohmann::json& fixture_json() {
  static const nlohmann::json j = [] {
    std::ifstream f(kDir + "/tokenizer.json");
    REQUIRE(f.good());
    return nlohmann::json::parse(f);
  }();
  return j;
}

const Tokenizer& fixture() {
  static const Tokenizer t = Tokenizer::from_json(fixture_json(), "fixture tokenizer.json");
  return t;
}

struct Reference {
  std::string text;
  Ids ids, ids_metaspace;
  std::string decoded;
};

const std::vector<Reference>& references() {
  static const std::vector<Reference> refs = [] {
    std::vector<Reference> r;
    std::ifstream f(kDir + "/reference.jsonl");
    REQUIRE(f.good());
    std::string line;
    while (std::getline(f, line)) {
      const nlohmann::json e = nlohmann::json::parse(line);
      Reference x;
      x.text = e.at("text").get<std::string>();
      x.ids = e.at("ids").get<Ids>();
      x.ids_metaspace = e.contains("ids_metaspace") ? e.at("ids_metaspace").get<Ids>() : x.ids;
      x.decoded = e.contains("decoded") ? e.at("decoded").get<std::string>() : x.text;
      r.push_back(std::move(x));
    }
    return r;
  }();
  return refs;
}

std::string stream_decode(const Tokenizer& t, const Ids& ids, bool skip_special) {
  StreamDecoder d(t, skip_special);
  std::string out;
  for (std::int64_t id : ids) out += d.step(id);
  return out + d.finish();
}

// A small tokenizer.json for hand-written cases: characters a, b, c, the byte tokens of 'x' (0x78) and 0xC3 0xA9
// (é), merges a+a (rank 0), aa+a (rank 1), b+c (rank 2).
nlohmann::json tiny_json() {
  return nlohmann::json::parse(R"({
    "version": "1.0",
    "added_tokens": [{"id": 0, "content": "<unk>", "special": true, "normalized": false},
                     {"id": 1, "content": "<s>", "special": true, "normalized": false},
                     {"id": 2, "content": "</s>", "special": true, "normalized": false}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
    "pre_tokenizer": null,
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                       "pair": [],
                       "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                 {"type": "ByteFallback"}, {"type": "Fuse"},
                                                 {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
              "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "b": 5, "c": 6, "aa": 7, "aaa": 8, "bc": 9,
                        "<0x78>": 10, "<0xC3>": 11, "<0xA9>": 12, "▁a": 13},
              "merges": ["a a", "aa a", "b c", "▁ a"]}
  })");
}

Tokenizer tiny(const nlohmann::json& j = tiny_json()) { return Tokenizer::from_json(j, "tiny"); }

void require_error(const nlohmann::json& j, const std::string& expected_part) {
  try {
    (void)Tokenizer::from_json(j, "bad");
    FAIL("no error; expected one mentioning: " << expected_part);
  } catch (const retnet::Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(expected_part) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("tokenizer: the fixture's vocabulary and special tokens", "[tokenizer]") {
  const Tokenizer& t = fixture();
  CHECK(t.vocab_size() == 32000);
  CHECK(t.bos_id() == 1);
  CHECK(t.eos_id() == 2);
  CHECK(t.unk_id() == 0);
  CHECK(t.token_to_id("<0x0A>") == 13);
  CHECK(t.token_to_id("</s>") == 2);
  CHECK_FALSE(t.token_to_id("no such token").has_value());
  CHECK(t.id_to_token(1) == "<s>");
  CHECK(t.is_special(2));
  CHECK_FALSE(t.is_special(13));
  CHECK(t.byte_value(13) == 0x0a);
  CHECK(t.byte_value(1) == -1);

  const Tokenizer d = Tokenizer::from_directory(kDir);
  CHECK(d.bos_id() == 1);
  CHECK(d.eos_id() == 2);
  CHECK(d.encode("Hello world") == Ids{1, 22557, 1526});
}

TEST_CASE("tokenizer: ids equal the reference implementation's", "[tokenizer]") {
  const Tokenizer& t = fixture();
  const auto& refs = references();
  REQUIRE(refs.size() > 2000);
  std::size_t mismatches = 0;
  for (const Reference& r : refs) {
    const Ids ids = t.encode(r.text, false);
    if (ids != r.ids) {
      ++mismatches;
      UNSCOPED_INFO("text " << nlohmann::json(r.text).dump());
      CHECK(ids == r.ids);
    }
    Ids with_bos{1};
    with_bos.insert(with_bos.end(), r.ids.begin(), r.ids.end());
    if (t.encode(r.text, true) != with_bos) ++mismatches;
    if (t.decode(r.ids) != r.decoded) {
      ++mismatches;
      UNSCOPED_INFO("decode of " << nlohmann::json(r.text).dump());
      CHECK(t.decode(r.ids) == r.decoded);
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("tokenizer: decode(encode(s)) == s and streaming decode agrees", "[tokenizer]") {
  const Tokenizer& t = fixture();
  std::size_t failures = 0;
  std::size_t checked = 0;
  for (const Reference& r : references()) {
    // "▁" stands for a space inside tokens, so text containing it cannot come back unchanged.
    if (r.text.find("\u2581") != std::string::npos) continue;
    ++checked;
    const Ids ids = t.encode(r.text, true, /*parse_special=*/false);
    if (t.decode(ids, true) != r.text || stream_decode(t, ids, true) != r.text) {
      ++failures;
      UNSCOPED_INFO("text " << nlohmann::json(r.text).dump());
      CHECK(t.decode(ids, true) == r.text);
      CHECK(stream_decode(t, ids, true) == r.text);
    }
    // With special tokens parsed and kept, streaming still matches the batch decode.
    const Ids parsed = t.encode(r.text, true);
    if (stream_decode(t, parsed, false) != t.decode(parsed, false)) {
      ++failures;
      UNSCOPED_INFO("streamed with specials " << nlohmann::json(r.text).dump());
      CHECK(stream_decode(t, parsed, false) == t.decode(parsed, false));
    }
  }
  CHECK(checked > 2000);
  CHECK(failures == 0);
}

TEST_CASE("tokenizer: the Metaspace pre-tokenizer form and [a, b] merges", "[tokenizer]") {
  nlohmann::json meta = fixture_json();
  meta["normalizer"] = nullptr;
  meta["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "first"}, {"split", false}};
  nlohmann::json pairs = fixture_json();
  for (auto& m : pairs["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const std::size_t sp = s.find(' ');
    m = nlohmann::json::array({s.substr(0, sp), s.substr(sp + 1)});
  }
  const Tokenizer tm = Tokenizer::from_json(meta, "metaspace");
  const Tokenizer tp = Tokenizer::from_json(pairs, "pairs");
  std::size_t mismatches = 0;
  for (const Reference& r : references()) {
    if (tm.encode(r.text, false) != r.ids_metaspace) {
      ++mismatches;
      UNSCOPED_INFO("metaspace " << nlohmann::json(r.text).dump());
      CHECK(tm.encode(r.text, false) == r.ids_metaspace);
    }
    if (tp.encode(r.text, false) != r.ids) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("tokenizer: special tokens", "[tokenizer]") {
  const Tokenizer& t = fixture();
  CHECK(t.encode("", true) == Ids{1});
  CHECK(t.encode("", false).empty());
  CHECK(t.encode("a<s>b", false) == Ids{264, 1, 287});
  const Ids plain = t.encode("a<s>b", false, false);
  CHECK(std::find(plain.begin(), plain.end(), 1) == plain.end());
  CHECK(t.decode(plain) == "a<s>b");
  CHECK(t.decode(Ids{1, 22557, 1526, 2}) == "<s> Hello world</s>");
  CHECK(t.decode(Ids{1, 22557, 1526, 2}, true) == "Hello world");
}

TEST_CASE("tokenizer: BPE merge order and byte fallback on a small vocabulary", "[tokenizer]") {
  const Tokenizer t = tiny();
  // "▁aaaaa": ▁+a is rank 3, a+a rank 0 (leftmost first), then aa+a: aa, aaa.
  CHECK(t.encode("aaaaa", false) == Ids{3, 7, 8});
  CHECK(t.encode("abc", false) == Ids{13, 9});
  CHECK(t.encode("x", false) == Ids{3, 10});      // byte fallback
  CHECK(t.encode("é", false) == Ids{3, 11, 12});  // two bytes
  CHECK(t.encode("zzq", false) == Ids{3, 0});     // no byte tokens: unk, fused
  CHECK(t.decode(Ids{3, 11, 12}) == "é");
  CHECK(t.decode(Ids{11, 4}) ==
        "\xEF\xBF\xBD"
        "a");                                                                  // an unfinished character: U+FFFD
  CHECK(t.decode(Ids{11, 11, 12}) == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // invalid run: U+FFFD per byte
}

TEST_CASE("tokenizer: streaming decode holds back unfinished characters", "[tokenizer]") {
  const Tokenizer t = tiny();
  StreamDecoder d(t);
  CHECK(d.step(1).empty());  // <s>, skipped
  CHECK(d.step(13) == "a");  // leading space stripped, as decode() does
  CHECK(d.step(11).empty());
  CHECK(d.step(12) == "é");
  CHECK(d.step(3) == " ");
  CHECK(d.step(11).empty());
  CHECK(d.finish() == "\xEF\xBF\xBD");
  CHECK_THROWS_AS(d.step(99), retnet::Error);
}

TEST_CASE("tokenizer: long inputs stay fast", "[tokenizer]") {
  const Tokenizer& t = fixture();
  for (const std::string& unit : {std::string("a"), std::string(" "), std::string("\xF0\xA0\x80\x80")}) {
    std::string s;
    while (s.size() < (1u << 20)) s += unit;
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = t.encode(s, false);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO("unit " << nlohmann::json(unit).dump() << ": " << ids.size() << " tokens in " << seconds << " s");
    CHECK(seconds < 5.0);
    CHECK(t.decode(ids) == s);
  }
}

TEST_CASE("tokenizer: malformed input is an error naming it", "[tokenizer]") {
  const Tokenizer& t = fixture();
  CHECK_THROWS_WITH(t.encode("ok \xC3("), Catch::Contains("invalid UTF-8 at byte 3"));
  CHECK_THROWS_WITH(t.encode("\xED\xA0\x80"), Catch::Contains("invalid UTF-8"));  // a surrogate
  CHECK_THROWS_WITH(t.decode(Ids{5, 32000}), Catch::Contains("ids[1]: token id 32000"));
  CHECK_THROWS_WITH(t.decode(Ids{-1}), Catch::Contains("token id -1"));
  CHECK_THROWS_WITH(t.id_to_token(40000), Catch::Contains("40000"));
  CHECK_THROWS_WITH(Tokenizer::from_json_string("{\"model\": ", "broken.json"), Catch::Contains("not valid JSON"));
  CHECK_THROWS_WITH(Tokenizer::from_file(kDir + "/no-such-file.json"), Catch::Contains("cannot open"));

  nlohmann::json j = tiny_json();
  j["model"]["type"] = "WordPiece";
  require_error(j, "only BPE");
  j = tiny_json();
  j["model"].erase("vocab");
  require_error(j, "missing field \"vocab\"");
  j = tiny_json();
  j["model"]["vocab"]["b"] = 4;
  require_error(j, "used by another token");
  j = tiny_json();
  j["model"]["vocab"]["b"] = 99;
  require_error(j, "out of range");
  j = tiny_json();
  j["model"]["merges"].push_back("a q");
  require_error(j, "merges[4]: token \"q\" is not in the vocabulary");
  j = tiny_json();
  j["model"]["merges"].push_back("a b");
  require_error(j, "merged token \"ab\"");
  j = tiny_json();
  j["model"]["merges"].push_back("ab");
  require_error(j, "two tokens separated by one space");
  j = tiny_json();
  j["model"]["merges"] = 3;
  require_error(j, "merges: expected an array");
  j = tiny_json();
  j["model"]["unk_token"] = "<nope>";
  require_error(j, "unk_token = \"<nope>\"");
  j = tiny_json();
  j["model"]["dropout"] = 0.1;
  require_error(j, "dropout");
  j = tiny_json();
  j["normalizer"] = {{"type", "NFKC"}};
  require_error(j, "normalizer.type = \"NFKC\"");
  j = tiny_json();
  j["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", " +"}};
  require_error(j, "Regex patterns are not supported");
  j = tiny_json();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}};
  require_error(j, "pre_tokenizer.type = \"ByteLevel\"");
  j = tiny_json();
  j["decoder"]["decoders"][0]["type"] = "WordPiece";
  require_error(j, "decoders[0].type = \"WordPiece\"");
  j = tiny_json();
  j["added_tokens"][1]["single_word"] = true;
  require_error(j, "single_word");
  j = tiny_json();
  j["added_tokens"][1]["content"] = "<t>";
  require_error(j, "is \"<s>\" in the vocabulary");
  j = tiny_json();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {70000};
  require_error(j, "out of range");
  j = tiny_json();
  j["post_processor"]["single"] = nlohmann::json::array();
  require_error(j, "no {\"Sequence\"");
  j = tiny_json();
  j["model"]["vocab"]["\xC3"] = 14;
  require_error(j, "invalid UTF-8");

  // No unk token and no byte for the character: encoding it is an error, not a crash.
  j = tiny_json();
  j["model"].erase("unk_token");
  CHECK_THROWS_WITH(tiny(j).encode("q"), Catch::Contains("U+71"));
}
