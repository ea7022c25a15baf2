#pragma once
// Hugging Face tokenizer.json of the SentencePiece-BPE family (Llama, Mistral and the models trained with their
// tokenizers, such as fla's RetNets): encode text to token ids and decode ids to text, without Python.
//
// Needs nlohmann_json: link nlohmann_json::nlohmann_json into every program that includes this header (as for
// retnet/io/config_json.hpp).
//
// What is read, and what each part does (the behaviour of the Rust `tokenizers` library, which is what Python's
// transformers runs for these files):
//   * model: BPE over Unicode characters with `vocab`, `merges` ("a b" strings or ["a", "b"] pairs; rank = position,
//     a later duplicate pair wins), `byte_fallback` (a character missing from the vocabulary becomes the tokens
//     <0xXX> of its UTF-8 bytes), `unk_token`, `fuse_unk`, `ignore_merges`. Merges are applied lowest rank first,
//     leftmost first among equal ranks, with a heap over the word's symbol list: O(n log n) in the word length.
//   * added_tokens: matched in the text before anything else, leftmost and longest first (`normalized: false`
//     tokens on the raw text, `normalized: true` ones on each normalized piece), `lstrip` / `rstrip` swallow the
//     Unicode whitespace beside a match. `single_word` tokens are refused (they need Unicode word tables).
//   * normalizer: Sequence, Prepend, Replace with a String pattern (Llama's legacy form: Prepend "▁" then
//     Replace " " -> "▁"), applied to each piece of text between added tokens.
//   * pre_tokenizer: none (the whole piece is one BPE word), Metaspace (`prepend_scheme` always / first / never,
//     or the older `add_prefix_space`; `split`, true when absent), Sequence of these.
//   * post_processor: TemplateProcessing's `single` template (Llama's adds <s>), used when encode() is asked to
//     add special tokens; Sequence of TemplateProcessing.
//   * decoder: Sequence, Replace (String pattern), ByteFallback (a run of <0xXX> tokens becomes its bytes when they
//     are valid UTF-8, else one U+FFFD per byte), Fuse, Strip, Metaspace.
// Anything else (another model type, a regex pattern, a normalizer such as NFKC, a ByteLevel pre-tokenizer) is a
// retnet::Error naming the part, as is every malformed field.
//
// bos / eos / unk: unk is the model's unk_token; bos is the first special token of the single template (else
// "<s>"); eos is "</s>"; Tokenizer::from_directory() takes the names from tokenizer_config.json when present.
// An id of -1 means "this tokenizer has none".
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "retnet/core/error.hpp"

namespace retnet::io {

namespace tokenizer_detail {

// Decodes the UTF-8 character at s[i] (strict: no overlong forms, no surrogates, nothing above U+10FFFF).
// Returns its byte length, 0 when the bytes there are not valid UTF-8; *cp receives the code point.
inline std::size_t utf8_char(std::string_view s, std::size_t i, char32_t* cp) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  const std::size_t left = s.size() - i;
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  std::size_t n;
  char32_t v;
  char32_t min;
  if ((c & 0xe0) == 0xc0) {
    n = 2, v = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3, v = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (left < n) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xc0) != 0x80) return 0;
    v = (v << 6) | (b(k) & 0x3f);
  }
  if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return n;
}

// Length of the prefix of `bytes` that could still become valid UTF-8 with more bytes: 0 if `bytes` ends on a
// character boundary or its tail can never complete.
inline std::size_t incomplete_utf8_tail(std::string_view bytes) {
  const std::size_t n = bytes.size();
  for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xc0) == 0x80) continue;  // continuation byte: look further back for the lead
    std::size_t need = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (need <= back) return 0;  // ASCII, complete, or an invalid lead
    // Check that the bytes so far do not already rule the character out (overlong, surrogate, > U+10FFFF).
    const auto c1 = back >= 2 ? static_cast<unsigned char>(bytes[n - back + 1]) : 0;
    if (back >= 2) {
      if (c == 0xe0 && c1 < 0xa0) return 0;
      if (c == 0xed && c1 >= 0xa0) return 0;
      if (c == 0xf0 && c1 < 0x90) return 0;
      if (c == 0xf4 && c1 >= 0x90) return 0;
    }
    if (c == 0xc0 || c == 0xc1 || c > 0xf4) return 0;
    return back;
  }
  return 0;
}

// Lets the vocabulary map be searched with a string_view without building a string.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

// Unicode White_Space (Rust's char::is_whitespace), used by lstrip / rstrip.
inline bool is_unicode_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Replaces every non-overlapping occurrence of `from` (left to right) by `to`.
inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  if (from.empty()) return std::string(s);
  out.reserve(s.size());
  std::size_t i = 0;
  while (true) {
    const std::size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i));
    out.append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

// The byte a ByteFallback token such as "<0x0A>" stands for, or -1. Mirrors the Rust decoder: six bytes, "<0x",
// two characters parsed as hexadecimal (an explicit '+' sign is accepted, as Rust's from_str_radix does), ">".
inline int byte_token_value(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  const auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (t[3] == '+') return hex(t[4]);
  const int hi = hex(t[3]);
  const int lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

inline const nlohmann::json& member(const nlohmann::json& obj, const char* key, const std::string& where) {
  require(obj.is_object(), where, ": expected a JSON object, got ", obj.type_name());
  const auto it = obj.find(key);
  require(it != obj.end(), where, ": missing field \"", key, "\"");
  return *it;
}

inline const nlohmann::json* optional_member(const nlohmann::json& obj, const char* key) {
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

inline std::string get_string(const nlohmann::json& v, const std::string& where) {
  require(v.is_string(), where, ": expected a string, got ", v.type_name());
  return v.get<std::string>();
}

inline bool get_bool(const nlohmann::json& obj, const char* key, bool fallback, const std::string& where) {
  const nlohmann::json* v = optional_member(obj, key);
  if (!v) return fallback;
  require(v->is_boolean(), where, ".", key, ": expected a boolean, got ", v->type_name());
  return v->get<bool>();
}

inline std::int64_t get_int(const nlohmann::json& v, std::int64_t lo, std::int64_t hi, const std::string& where) {
  require(v.is_number_integer(), where, ": expected an integer, got ", v.type_name());
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    require(u <= static_cast<std::uint64_t>(hi), where, " = ", u, " is out of range [", lo, ", ", hi, "]");
    return static_cast<std::int64_t>(u);
  }
  const auto x = v.get<std::int64_t>();
  require(x >= lo && x <= hi, where, " = ", x, " is out of range [", lo, ", ", hi, "]");
  return x;
}

// A Replace normalizer / decoder pattern: only the literal {"String": s} form (Llama's); regexes are refused.
inline std::string get_pattern(const nlohmann::json& step, const std::string& where) {
  const nlohmann::json& pattern = member(step, "pattern", where);
  require(pattern.is_object(), where, ".pattern: expected an object, got ", pattern.type_name());
  require(!pattern.contains("Regex"), where, ".pattern: Regex patterns are not supported (only {\"String\": ...})");
  std::string s = get_string(member(pattern, "String", where + ".pattern"), where + ".pattern.String");
  require(!s.empty(), where, ".pattern.String: must not be empty");
  return s;
}

inline void require_valid_utf8(std::string_view s, const std::string& where) {
  char32_t cp;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_char(s, i, &cp);
    require(n > 0, where, ": invalid UTF-8 at byte ", i);
    i += n;
  }
}

// Exactly one character: the replacement of Metaspace and the content of Strip.
inline char32_t get_char(const nlohmann::json& v, const std::string& where) {
  const std::string s = get_string(v, where);
  char32_t cp = 0;
  require(!s.empty() && utf8_char(s, 0, &cp) == s.size(), where, ": expected one character, got \"", s, "\"");
  return cp;
}

enum class PrependScheme { always, first, never };

inline PrependScheme get_prepend_scheme(const nlohmann::json& step, const std::string& where) {
  if (const nlohmann::json* p = optional_member(step, "prepend_scheme")) {
    const std::string s = get_string(*p, where + ".prepend_scheme");
    if (s == "always") return PrependScheme::always;
    if (s == "first") return PrependScheme::first;
    if (s == "never") return PrependScheme::never;
    fail(where, ".prepend_scheme = \"", s, "\": expected \"always\", \"first\" or \"never\"");
  }
  // The older form: add_prefix_space (true when absent).
  return get_bool(step, "add_prefix_space", true, where) ? PrependScheme::always : PrependScheme::never;
}

}  // namespace tokenizer_detail

class Tokenizer {
 public:
  // Reads a tokenizer.json file.
  static Tokenizer from_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    require(f.good(), "tokenizer: cannot open \"", path, "\"");
    std::ostringstream text;
    text << f.rdbuf();
    require(!f.bad(), "tokenizer: cannot read \"", path, "\"");
    return from_json_string(text.str(), path);
  }

  // Reads DIR/tokenizer.json and, when present, the bos / eos / unk token names of DIR/tokenizer_config.json
  // (a model directory as downloaded from the Hugging Face hub).
  static Tokenizer from_directory(const std::string& dir) {
    const std::filesystem::path d(dir);
    Tokenizer t = from_file((d / "tokenizer.json").string());
    const std::filesystem::path cfg = d / "tokenizer_config.json";
    std::error_code ec;
    if (std::filesystem::exists(cfg, ec)) {
      std::ifstream f(cfg, std::ios::binary);
      require(f.good(), "tokenizer: cannot open \"", cfg.string(), "\"");
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(f);
      } catch (const nlohmann::json::exception& e) {
        fail("tokenizer: \"", cfg.string(), "\" is not valid JSON: ", e.what());
      }
      t.apply_tokenizer_config(j, cfg.string());
    }
    return t;
  }

  // Parses the text of a tokenizer.json; `where` names it in error messages.
  static Tokenizer from_json_string(std::string_view json_text, const std::string& where = "tokenizer.json") {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(json_text.begin(), json_text.end());
    } catch (const nlohmann::json::exception& e) {
      fail("tokenizer: \"", where, "\" is not valid JSON: ", e.what());
    }
    return from_json(j, where);
  }

  static Tokenizer from_json(const nlohmann::json& j, const std::string& where = "tokenizer.json") {
    Tokenizer t;
    t.load(j, where);
    return t;
  }

  // Token ids of `text` (valid UTF-8, else an Error naming the byte offset). `add_bos` adds the special tokens
  // of the post-processor's single template (Llama's: <s> in front); without a post-processor, bos if there is
  // one. `parse_special` = false treats the spellings of added tokens ("<s>") as plain text.
  std::vector<std::int64_t> encode(std::string_view text, bool add_bos = true, bool parse_special = true) const {
    tokenizer_detail::require_valid_utf8(text, "tokenizer: encode: input text");
    std::vector<std::int64_t> body;
    body.reserve(text.size() / 3 + 4);
    split_added(text, false, parse_special, [&](std::string_view piece, std::int64_t added_id, std::size_t offset) {
      if (added_id >= 0) {
        body.push_back(added_id);
        return;
      }
      std::string normalized = normalize(piece);
      split_added(normalized, true, parse_special,
                  [&](std::string_view sub, std::int64_t sub_id, std::size_t sub_offset) {
                    if (sub_id >= 0) {
                      body.push_back(sub_id);
                    } else {
                      pre_tokenize_and_encode(sub, offset == 0 && sub_offset == 0, body);
                    }
                  });
    });
    if (!add_bos) return body;
    std::vector<std::int64_t> out;
    out.reserve(body.size() + template_before_.size() + template_after_.size() + 1);
    if (has_template_) {
      out.insert(out.end(), template_before_.begin(), template_before_.end());
      out.insert(out.end(), body.begin(), body.end());
      out.insert(out.end(), template_after_.begin(), template_after_.end());
    } else {
      if (bos_id_ >= 0) out.push_back(bos_id_);
      out.insert(out.end(), body.begin(), body.end());
    }
    return out;
  }

  // Text of `ids` (each in [0, vocab_size()), else an Error naming it). `skip_special` drops special added tokens.
  std::string decode(std::span<const std::int64_t> ids, bool skip_special = false) const {
    std::vector<std::string> pieces;
    pieces.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int64_t id = ids[i];
      check_id(id, "tokenizer: decode: ids[" + std::to_string(i) + "]");
      if (skip_special && special_[static_cast<std::size_t>(id)]) continue;
      pieces.push_back(tokens_[static_cast<std::size_t>(id)]);
    }
    return run_decoder(std::move(pieces));
  }
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special = false) const {
    return decode(std::span<const std::int64_t>(ids.data(), ids.size()), skip_special);
  }

  std::optional<std::int64_t> token_to_id(std::string_view token) const {
    for (const AddedToken& a : added_)
      if (a.content == token) return a.id;
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }

  const std::string& id_to_token(std::int64_t id) const {
    check_id(id, "tokenizer: id_to_token");
    return tokens_[static_cast<std::size_t>(id)];
  }

  // One more than the largest id of the model's vocabulary and the added tokens.
  std::int64_t vocab_size() const { return static_cast<std::int64_t>(tokens_.size()); }
  std::int64_t bos_id() const { return bos_id_; }
  std::int64_t eos_id() const { return eos_id_; }
  std::int64_t unk_id() const { return unk_id_; }
  // Whether `id` is an added token marked special (skipped by decode(..., true)).
  bool is_special(std::int64_t id) const {
    check_id(id, "tokenizer: is_special");
    return special_[static_cast<std::size_t>(id)];
  }
  // The byte of a byte-fallback token <0xXX>, or -1 for any other token.
  int byte_value(std::int64_t id) const {
    check_id(id, "tokenizer: byte_value");
    return byte_value_[static_cast<std::size_t>(id)];
  }

 private:
  struct AddedToken {
    std::int64_t id = -1;
    std::string content;
    bool special = false;
    bool lstrip = false;
    bool rstrip = false;
    bool normalized = false;
  };
  struct Normalizer {
    enum Kind { prepend, replace } kind;
    std::string a, b;  // prepend: a = text; replace: a -> b
  };
  struct Metaspace {
    std::string replacement;
    tokenizer_detail::PrependScheme scheme;
    bool split;
  };
  struct DecodeStep {
    enum Kind { replace, byte_fallback, fuse, strip, metaspace } kind;
    std::string a, b;  // replace: a -> b; metaspace: a = replacement
    char32_t content = 0;
    std::size_t start = 0, stop = 0;
    tokenizer_detail::PrependScheme scheme = tokenizer_detail::PrependScheme::always;
  };
  struct Merge {
    std::int32_t rank;
    std::int32_t new_id;
  };

  std::vector<std::string> tokens_;  // id -> token text
  std::vector<bool> present_;        // ids in [0, vocab_size) that name a token
  std::vector<bool> special_;
  std::vector<int> byte_value_;
  std::unordered_map<std::string, std::int32_t, tokenizer_detail::StringHash, std::equal_to<>> vocab_;  // model's
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::array<std::int32_t, 256> byte_ids_{};   // <0xXX> ids for byte fallback, -1 when absent
  std::array<std::int32_t, 128> ascii_ids_{};  // ids of the one-character ASCII tokens, -1 when absent
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::int64_t unk_id_ = -1, bos_id_ = -1, eos_id_ = -1;
  std::vector<AddedToken> added_;
  std::array<std::vector<std::size_t>, 256> added_by_first_byte_;  // indices into added_, longest first
  std::vector<Normalizer> normalizers_;
  std::vector<Metaspace> pre_tokenizers_;
  bool has_template_ = false;
  std::vector<std::int64_t> template_before_, template_after_;
  std::vector<DecodeStep> decoder_;

  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  void check_id(std::int64_t id, const std::string& where) const {
    require(id >= 0 && id < vocab_size() && present_[static_cast<std::size_t>(id)], where, ": token id ", id,
            " is not in the vocabulary (ids are in [0, ", vocab_size(), "))");
  }

  // ---- loading -------------------------------------------------------------------------------------------------

  void load(const nlohmann::json& j, const std::string& where) {
    using namespace tokenizer_detail;
    require(j.is_object(), "tokenizer: \"", where, "\": expected a JSON object at the top level, got ", j.type_name());
    const std::string w = "tokenizer \"" + where + "\"";
    load_model(member(j, "model", w), w + ": model");
    load_added_tokens(j, w + ": added_tokens");
    if (const nlohmann::json* n = optional_member(j, "normalizer")) load_normalizer(*n, w + ": normalizer");
    if (const nlohmann::json* p = optional_member(j, "pre_tokenizer")) load_pre_tokenizer(*p, w + ": pre_tokenizer");
    if (const nlohmann::json* p = optional_member(j, "post_processor")) load_post_processor(*p, w + ": post_processor");
    if (const nlohmann::json* d = optional_member(j, "decoder")) load_decoder(*d, w + ": decoder");

    if (bos_id_ < 0 && !template_before_.empty()) bos_id_ = template_before_.front();
    if (bos_id_ < 0) bos_id_ = token_to_id("<s>").value_or(-1);
    eos_id_ = token_to_id("</s>").value_or(-1);
  }

  void load_model(const nlohmann::json& m, const std::string& w) {
    using namespace tokenizer_detail;
    require(m.is_object(), w, ": expected an object, got ", m.type_name());
    if (const nlohmann::json* type = optional_member(m, "type")) {
      const std::string t = get_string(*type, w + ".type");
      require(t == "BPE", w, ".type = \"", t, "\": only BPE models (the SentencePiece-BPE family) are supported");
    }
    if (const nlohmann::json* d = optional_member(m, "dropout")) {
      require(d->is_number(), w, ".dropout: expected a number or null, got ", d->type_name());
      require(d->get<double>() == 0.0, w, ".dropout = ", d->get<double>(),
              ": BPE dropout (random merges) is not supported");
    }
    for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (const nlohmann::json* a = optional_member(m, affix)) {
        const std::string s = get_string(*a, w + "." + affix);
        require(s.empty(), w, ".", affix, " = \"", s, "\" is not supported (the SentencePiece-BPE family has none)");
      }
    }
    byte_fallback_ = get_bool(m, "byte_fallback", false, w);
    fuse_unk_ = get_bool(m, "fuse_unk", false, w);
    ignore_merges_ = get_bool(m, "ignore_merges", false, w);

    const nlohmann::json& vocab = member(m, "vocab", w);
    require(vocab.is_object(), w, ".vocab: expected an object (token -> id), got ", vocab.type_name());
    const std::size_t n = vocab.size();
    require(n > 0, w, ".vocab is empty");
    require(n < (std::size_t{1} << 30), w, ".vocab has ", n, " tokens, more than supported");
    tokens_.assign(n, std::string());
    std::vector<bool> seen(n, false);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const std::string at = w + ".vocab[\"" + it.key() + "\"]";
      require_valid_utf8(it.key(), at);
      const auto id = static_cast<std::size_t>(get_int(it.value(), 0, static_cast<std::int64_t>(n) - 1, at));
      require(!seen[id], at, " = ", id, ": the id is used by another token too");
      seen[id] = true;
      tokens_[id] = it.key();
      vocab_.emplace(it.key(), static_cast<std::int32_t>(id));
    }
    // The ids are n distinct values in [0, n): dense.
    present_.assign(n, true);

    if (const nlohmann::json* unk = optional_member(m, "unk_token")) {
      const std::string name = get_string(*unk, w + ".unk_token");
      const auto it = vocab_.find(name);
      require(it != vocab_.end(), w, ".unk_token = \"", name, "\" is not in the vocabulary");
      unk_id_ = it->second;
    }
    ascii_ids_.fill(-1);
    for (int c = 0; c < 128; ++c) {
      const char ch = static_cast<char>(c);
      const auto it = vocab_.find(std::string_view(&ch, 1));
      if (it != vocab_.end()) ascii_ids_[static_cast<std::size_t>(c)] = it->second;
    }
    byte_ids_.fill(-1);
    if (byte_fallback_) {
      for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        const auto it = vocab_.find(std::string_view(name, 6));
        if (it != vocab_.end()) byte_ids_[static_cast<std::size_t>(b)] = it->second;
      }
    }

    const nlohmann::json& merges = member(m, "merges", w);
    require(merges.is_array(), w, ".merges: expected an array, got ", merges.type_name());
    require(merges.size() < (std::size_t{1} << 30), w, ".merges has too many entries");
    merges_.reserve(merges.size());
    std::string joined;
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const std::string at = w + ".merges[" + std::to_string(r) + "]";
      const nlohmann::json& e = merges[r];
      std::string a, b;
      if (e.is_string()) {
        const std::string s = e.get<std::string>();
        const std::size_t sp = s.find(' ');
        require(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, at, " = \"", s,
                "\": expected two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        require(e.is_array() && e.size() == 2, at, ": expected \"a b\" or [\"a\", \"b\"], got ", e.type_name(),
                e.is_array() ? " of size " + std::to_string(e.size()) : std::string());
        a = get_string(e[0], at + "[0]");
        b = get_string(e[1], at + "[1]");
      }
      const auto ia = vocab_.find(a);
      require(ia != vocab_.end(), at, ": token \"", a, "\" is not in the vocabulary");
      const auto ib = vocab_.find(b);
      require(ib != vocab_.end(), at, ": token \"", b, "\" is not in the vocabulary");
      joined = a + b;
      const auto ij = vocab_.find(joined);
      require(ij != vocab_.end(), at, ": the merged token \"", joined, "\" is not in the vocabulary");
      merges_[pair_key(ia->second, ib->second)] = Merge{static_cast<std::int32_t>(r), ij->second};
    }
  }

  void load_added_tokens(const nlohmann::json& j, const std::string& w) {
    using namespace tokenizer_detail;
    const nlohmann::json* list = optional_member(j, "added_tokens");
    if (list) {
      require(list->is_array(), w, ": expected an array, got ", list->type_name());
      for (std::size_t i = 0; i < list->size(); ++i) {
        const std::string at = w + "[" + std::to_string(i) + "]";
        const nlohmann::json& e = (*list)[i];
        AddedToken a;
        // Added tokens may take ids past the model's vocabulary, but not arbitrarily far (a dense id table).
        a.id = get_int(member(e, "id", at), 0, vocab_size() + static_cast<std::int64_t>(list->size()) - 1, at + ".id");
        a.content = get_string(member(e, "content", at), at + ".content");
        require(!a.content.empty(), at, ".content is empty");
        require_valid_utf8(a.content, at + ".content");
        a.special = get_bool(e, "special", false, at);
        a.lstrip = get_bool(e, "lstrip", false, at);
        a.rstrip = get_bool(e, "rstrip", false, at);
        a.normalized = get_bool(e, "normalized", !a.special, at);
        require(!get_bool(e, "single_word", false, at), at, ".single_word = true is not supported");
        const auto id = static_cast<std::size_t>(a.id);
        if (id >= tokens_.size()) {
          tokens_.resize(id + 1);
          present_.resize(id + 1, false);
        }
        if (present_[id]) {
          require(tokens_[id] == a.content, at, ": id ", a.id, " is \"", tokens_[id],
                  "\" in the vocabulary but the added token says \"", a.content, "\"");
        }
        for (const AddedToken& o : added_) {
          require(o.content != a.content || o.id == a.id, at, ": \"", a.content, "\" is added twice with ids ", o.id,
                  " and ", a.id);
        }
        tokens_[id] = a.content;
        present_[id] = true;
        added_.push_back(std::move(a));
      }
    }
    special_.assign(tokens_.size(), false);
    byte_value_.assign(tokens_.size(), -1);
    for (const AddedToken& a : added_) special_[static_cast<std::size_t>(a.id)] = a.special;
    for (std::size_t id = 0; id < tokens_.size(); ++id) byte_value_[id] = byte_token_value(tokens_[id]);
    for (std::size_t i = 0; i < added_.size(); ++i)
      added_by_first_byte_[static_cast<unsigned char>(added_[i].content[0])].push_back(i);
    for (auto& v : added_by_first_byte_) {
      std::stable_sort(v.begin(), v.end(), [&](std::size_t x, std::size_t y) {
        return added_[x].content.size() > added_[y].content.size();
      });
    }
  }

  void load_normalizer(const nlohmann::json& n, const std::string& w) {
    using namespace tokenizer_detail;
    const std::string type = get_string(member(n, "type", w), w + ".type");
    if (type == "Sequence") {
      const nlohmann::json& list = member(n, "normalizers", w);
      require(list.is_array(), w, ".normalizers: expected an array, got ", list.type_name());
      for (std::size_t i = 0; i < list.size(); ++i)
        load_normalizer(list[i], w + ".normalizers[" + std::to_string(i) + "]");
    } else if (type == "Prepend") {
      const std::string p = get_string(member(n, "prepend", w), w + ".prepend");
      require_valid_utf8(p, w + ".prepend");
      normalizers_.push_back(Normalizer{Normalizer::prepend, p, {}});
    } else if (type == "Replace") {
      const std::string from = get_pattern(n, w);
      const std::string to = get_string(member(n, "content", w), w + ".content");
      require_valid_utf8(from, w + ".pattern");
      require_valid_utf8(to, w + ".content");
      normalizers_.push_back(Normalizer{Normalizer::replace, from, to});
    } else {
      fail(w, ".type = \"", type, "\" is not supported (Sequence, Prepend, Replace are)");
    }
  }

  void load_pre_tokenizer(const nlohmann::json& p, const std::string& w) {
    using namespace tokenizer_detail;
    const std::string type = get_string(member(p, "type", w), w + ".type");
    if (type == "Sequence") {
      const nlohmann::json& list = member(p, "pretokenizers", w);
      require(list.is_array(), w, ".pretokenizers: expected an array, got ", list.type_name());
      for (std::size_t i = 0; i < list.size(); ++i)
        load_pre_tokenizer(list[i], w + ".pretokenizers[" + std::to_string(i) + "]");
    } else if (type == "Metaspace") {
      Metaspace m;
      std::string r;
      append_utf8(r, get_char(member(p, "replacement", w), w + ".replacement"));
      m.replacement = r;
      m.scheme = get_prepend_scheme(p, w);
      m.split = get_bool(p, "split", true, w);
      pre_tokenizers_.push_back(m);
    } else {
      fail(w, ".type = \"", type, "\" is not supported (Metaspace, Sequence are; ByteLevel belongs to another family)");
    }
  }

  void load_post_processor(const nlohmann::json& p, const std::string& w) {
    using namespace tokenizer_detail;
    const std::string type = get_string(member(p, "type", w), w + ".type");
    if (type == "Sequence") {
      const nlohmann::json& list = member(p, "processors", w);
      require(list.is_array(), w, ".processors: expected an array, got ", list.type_name());
      for (std::size_t i = 0; i < list.size(); ++i)
        load_post_processor(list[i], w + ".processors[" + std::to_string(i) + "]");
      return;
    }
    require(type == "TemplateProcessing", w, ".type = \"", type,
            "\" is not supported (TemplateProcessing, Sequence are)");
    require(!has_template_, w, ": more than one TemplateProcessing");
    const nlohmann::json& single = member(p, "single", w);
    require(single.is_array(), w, ".single: expected an array, got ", single.type_name());
    const nlohmann::json& specials = member(p, "special_tokens", w);
    require(specials.is_object(), w, ".special_tokens: expected an object, got ", specials.type_name());
    bool seen_sequence = false;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const std::string at = w + ".single[" + std::to_string(i) + "]";
      const nlohmann::json& item = single[i];
      require(item.is_object() && item.size() == 1, at, ": expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      if (item.contains("Sequence")) {
        const std::string seq = get_string(member(item["Sequence"], "id", at + ".Sequence"), at + ".Sequence.id");
        require(seq == "A", at, ".Sequence.id = \"", seq, "\": the single template can only hold sequence A");
        require(!seen_sequence, at, ": sequence A appears twice");
        seen_sequence = true;
        continue;
      }
      require(item.contains("SpecialToken"), at, ": expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      const std::string name =
          get_string(member(item["SpecialToken"], "id", at + ".SpecialToken"), at + ".SpecialToken.id");
      const auto it = specials.find(name);
      require(it != specials.end(), at, ": special token \"", name, "\" is not in ", w, ".special_tokens");
      const std::string idsw = w + ".special_tokens[\"" + name + "\"]";
      const nlohmann::json& ids = member(*it, "ids", idsw);
      require(ids.is_array(), w, ".special_tokens[\"", name, "\"].ids: expected an array");
      for (std::size_t k = 0; k < ids.size(); ++k) {
        const std::string idw = w + ".special_tokens[\"" + name + "\"].ids[" + std::to_string(k) + "]";
        const std::int64_t id = get_int(ids[k], 0, vocab_size() - 1, idw);
        check_id(id, idw);
        (seen_sequence ? template_after_ : template_before_).push_back(id);
      }
    }
    require(seen_sequence, w, ".single: has no {\"Sequence\": {\"id\": \"A\"}}");
    has_template_ = true;
  }

  void load_decoder(const nlohmann::json& d, const std::string& w) {
    using namespace tokenizer_detail;
    const std::string type = get_string(member(d, "type", w), w + ".type");
    DecodeStep s;
    if (type == "Sequence") {
      const nlohmann::json& list = member(d, "decoders", w);
      require(list.is_array(), w, ".decoders: expected an array, got ", list.type_name());
      for (std::size_t i = 0; i < list.size(); ++i) load_decoder(list[i], w + ".decoders[" + std::to_string(i) + "]");
      return;
    } else if (type == "Replace") {
      s.kind = DecodeStep::replace;
      s.a = get_pattern(d, w);
      s.b = get_string(member(d, "content", w), w + ".content");
    } else if (type == "ByteFallback") {
      s.kind = DecodeStep::byte_fallback;
    } else if (type == "Fuse") {
      s.kind = DecodeStep::fuse;
    } else if (type == "Strip") {
      s.kind = DecodeStep::strip;
      s.content = get_char(member(d, "content", w), w + ".content");
      s.start = static_cast<std::size_t>(get_int(member(d, "start", w), 0, 1 << 20, w + ".start"));
      s.stop = static_cast<std::size_t>(get_int(member(d, "stop", w), 0, 1 << 20, w + ".stop"));
    } else if (type == "Metaspace") {
      s.kind = DecodeStep::metaspace;
      append_utf8(s.a, get_char(member(d, "replacement", w), w + ".replacement"));
      s.scheme = get_prepend_scheme(d, w);
    } else {
      fail(w, ".type = \"", type, "\" is not supported (Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace are)");
    }
    decoder_.push_back(std::move(s));
  }

  void apply_tokenizer_config(const nlohmann::json& j, const std::string& w) {
    using namespace tokenizer_detail;
    require(j.is_object(), w, ": expected a JSON object, got ", j.type_name());
    const auto name_of = [&](const char* key) -> std::optional<std::string> {
      const nlohmann::json* v = optional_member(j, key);
      if (!v) return std::nullopt;
      if (v->is_object()) return get_string(member(*v, "content", w + "." + key), w + "." + key + ".content");
      return get_string(*v, w + "." + key);
    };
    const auto id_of = [&](const char* key, std::int64_t current) {
      const std::optional<std::string> name = name_of(key);
      if (!name) return current;
      const std::optional<std::int64_t> id = token_to_id(*name);
      require(id.has_value(), w, ".", key, " = \"", *name, "\" is not a token of the tokenizer");
      return *id;
    };
    bos_id_ = id_of("bos_token", bos_id_);
    eos_id_ = id_of("eos_token", eos_id_);
    unk_id_ = id_of("unk_token", unk_id_);
  }

  // ---- encoding ------------------------------------------------------------------------------------------------

  // Splits `text` at the added tokens whose `normalized` flag equals `normalized` and calls
  // emit(piece, -1, offset) for the text between matches and emit({}, id, offset) for each match.
  template <class Emit>
  void split_added(std::string_view text, bool normalized, bool parse_special, Emit&& emit) const {
    using namespace tokenizer_detail;
    if (!parse_special || added_.empty()) {
      if (!text.empty()) emit(text, -1, 0);
      return;
    }
    std::size_t piece_start = 0;
    std::size_t i = 0;
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      for (std::size_t k : added_by_first_byte_[static_cast<unsigned char>(text[i])]) {
        const AddedToken& a = added_[k];
        if (a.normalized == normalized && text.compare(i, a.content.size(), a.content) == 0) {
          hit = &a;
          break;  // longest first
        }
      }
      if (!hit) {
        ++i;
        continue;
      }
      std::size_t begin = i;
      std::size_t end = i + hit->content.size();
      if (hit->lstrip) {
        while (begin > piece_start) {
          std::size_t k = begin - 1;
          while (k > piece_start && (static_cast<unsigned char>(text[k]) & 0xc0) == 0x80) --k;
          char32_t cp;
          if (utf8_char(text, k, &cp) == 0 || !is_unicode_whitespace(cp)) break;
          begin = k;
        }
      }
      if (hit->rstrip) {
        char32_t cp;
        while (end < text.size()) {
          const std::size_t n = utf8_char(text, end, &cp);
          if (n == 0 || !is_unicode_whitespace(cp)) break;
          end += n;
        }
      }
      if (begin > piece_start) emit(text.substr(piece_start, begin - piece_start), -1, piece_start);
      emit(std::string_view(), hit->id, begin);
      piece_start = i = end;
    }
    if (piece_start < text.size()) emit(text.substr(piece_start), -1, piece_start);
  }

  std::string normalize(std::string_view s) const {
    std::string out(s);
    for (const Normalizer& n : normalizers_) {
      if (n.kind == Normalizer::prepend) {
        if (!out.empty()) out.insert(0, n.a);
      } else {
        out = tokenizer_detail::replace_all(out, n.a, n.b);
      }
    }
    return out;
  }

  // `at_start`: the piece begins the input text (Metaspace's prepend_scheme "first").
  void pre_tokenize_and_encode(std::string_view piece, bool at_start, std::vector<std::int64_t>& out) const {
    if (pre_tokenizers_.empty()) {
      bpe_word(piece, out);
      return;
    }
    std::vector<std::string> words{std::string(piece)};
    for (const Metaspace& m : pre_tokenizers_) {
      std::vector<std::string> next;
      for (std::size_t wi = 0; wi < words.size(); ++wi) {
        std::string s = tokenizer_detail::replace_all(words[wi], " ", m.replacement);
        const bool starts = s.compare(0, m.replacement.size(), m.replacement) == 0;
        const bool prepend = m.scheme == tokenizer_detail::PrependScheme::always ||
                             (m.scheme == tokenizer_detail::PrependScheme::first && at_start && wi == 0);
        if (prepend && !starts) s.insert(0, m.replacement);
        if (!m.split) {
          next.push_back(std::move(s));
          continue;
        }
        // Each replacement character begins a new word (it stays with the text after it).
        std::size_t begin = 0;
        while (begin < s.size()) {
          std::size_t end = s.find(m.replacement, begin + 1);
          if (end == std::string::npos) end = s.size();
          next.push_back(s.substr(begin, end - begin));
          begin = end;
        }
      }
      words = std::move(next);
    }
    for (const std::string& word : words) bpe_word(word, out);
  }

  void bpe_word(std::string_view word, std::vector<std::int64_t>& out) const {
    using namespace tokenizer_detail;
    if (word.empty()) return;
    if (ignore_merges_) {
      const auto it = vocab_.find(word);
      if (it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    struct Symbol {
      std::int32_t id, prev, next;
      bool alive;
    };
    std::vector<Symbol> sym;
    sym.reserve(word.size());
    bool last_was_unk = false;
    const auto add = [&](std::int32_t id) {
      const auto n = static_cast<std::int32_t>(sym.size());
      sym.push_back(Symbol{id, n - 1, -1, true});
      if (n > 0) sym[static_cast<std::size_t>(n - 1)].next = n;
    };
    char32_t cp;
    for (std::size_t i = 0; i < word.size();) {
      const std::size_t n = utf8_char(word, i, &cp);
      require(n > 0, "tokenizer: invalid UTF-8 at byte ", i, " of a normalized word");  // input was validated
      std::int32_t id = -1;
      if (n == 1) {
        id = ascii_ids_[static_cast<unsigned char>(word[i])];
      } else {
        const auto it = vocab_.find(word.substr(i, n));
        if (it != vocab_.end()) id = it->second;
      }
      if (id >= 0) {
        add(id);
        last_was_unk = false;
      } else {
        bool all_bytes = byte_fallback_;
        for (std::size_t k = 0; k < n && all_bytes; ++k)
          all_bytes = byte_ids_[static_cast<unsigned char>(word[i + k])] >= 0;
        if (all_bytes) {
          for (std::size_t k = 0; k < n; ++k) add(byte_ids_[static_cast<unsigned char>(word[i + k])]);
          last_was_unk = false;
        } else {
          require(unk_id_ >= 0, "tokenizer: encode: character U+", std::hex, static_cast<std::uint32_t>(cp),
                  " is not in the vocabulary and the tokenizer has no unk_token");
          if (!(fuse_unk_ && last_was_unk)) add(static_cast<std::int32_t>(unk_id_));
          last_was_unk = true;
        }
      }
      i += n;
    }

    // Queued pairs as rank << 32 | position: the smallest is the lowest rank, leftmost among equal ranks. Eight
    // bytes an entry keeps the heap compact; ranks identify merges uniquely, so an entry is stale exactly when
    // the pair now at its position has another rank (or none).
    std::vector<std::uint64_t> storage;
    storage.reserve(2 * sym.size());
    std::priority_queue<std::uint64_t, std::vector<std::uint64_t>, std::greater<>> heap(std::greater<>(),
                                                                                        std::move(storage));
    const auto merge_at = [&](std::int32_t pos) -> const Merge* {
      const std::int32_t nx = sym[static_cast<std::size_t>(pos)].next;
      if (nx < 0) return nullptr;
      const auto m =
          merges_.find(pair_key(sym[static_cast<std::size_t>(pos)].id, sym[static_cast<std::size_t>(nx)].id));
      return m == merges_.end() ? nullptr : &m->second;
    };
    const auto consider = [&](std::int32_t pos) {
      if (const Merge* m = merge_at(pos))
        heap.push(static_cast<std::uint64_t>(m->rank) << 32 | static_cast<std::uint32_t>(pos));
    };
    for (std::size_t p = 0; p + 1 < sym.size(); ++p) consider(static_cast<std::int32_t>(p));
    while (!heap.empty()) {
      const std::uint64_t top = heap.top();
      heap.pop();
      const auto rank = static_cast<std::int32_t>(top >> 32);
      const auto pos = static_cast<std::int32_t>(top & 0xffffffffu);
      Symbol& left = sym[static_cast<std::size_t>(pos)];
      if (!left.alive) continue;
      const Merge* m = merge_at(pos);
      if (m == nullptr || m->rank != rank) continue;  // stale: the pair at pos changed since it was queued
      Symbol& right = sym[static_cast<std::size_t>(left.next)];
      left.id = m->new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) sym[static_cast<std::size_t>(right.next)].prev = pos;
      if (left.prev >= 0) consider(left.prev);
      consider(pos);
    }
    for (std::int32_t p = 0; p >= 0; p = sym[static_cast<std::size_t>(p)].next)
      out.push_back(sym[static_cast<std::size_t>(p)].id);
  }

  // ---- decoding ------------------------------------------------------------------------------------------------

  std::string run_decoder(std::vector<std::string> pieces) const {
    using namespace tokenizer_detail;
    for (const DecodeStep& s : decoder_) {
      switch (s.kind) {
        case DecodeStep::replace:
          for (std::string& p : pieces) p = replace_all(p, s.a, s.b);
          break;
        case DecodeStep::byte_fallback: {
          std::vector<std::string> next;
          next.reserve(pieces.size());
          std::string bytes;
          const auto flush = [&] {
            if (bytes.empty()) return;
            if (utf8_valid(bytes)) {
              next.push_back(bytes);
            } else {
              std::string r;
              for (std::size_t k = 0; k < bytes.size(); ++k) r += "\xEF\xBF\xBD";  // U+FFFD per byte
              next.push_back(std::move(r));
            }
            bytes.clear();
          };
          for (std::string& p : pieces) {
            const int b = byte_token_value(p);
            if (b >= 0) {
              bytes += static_cast<char>(b);
            } else {
              flush();
              next.push_back(std::move(p));
            }
          }
          flush();
          pieces = std::move(next);
          break;
        }
        case DecodeStep::fuse: {
          std::string all;
          for (const std::string& p : pieces) all += p;
          pieces.assign(1, std::move(all));
          break;
        }
        case DecodeStep::strip:
          for (std::string& p : pieces) p = strip(p, s.content, s.start, s.stop);
          break;
        case DecodeStep::metaspace:
          for (std::size_t i = 0; i < pieces.size(); ++i) {
            // The replacement becomes a space; in the first piece it is dropped (it was the prepended prefix).
            const bool drop = i == 0 && s.scheme != PrependScheme::never;
            pieces[i] = replace_all(pieces[i], s.a, drop ? "" : " ");
          }
          break;
      }
    }
    std::string out;
    for (const std::string& p : pieces) out += p;
    return out;
  }

  static bool utf8_valid(std::string_view s) {
    char32_t cp;
    for (std::size_t i = 0; i < s.size();) {
      const std::size_t n = tokenizer_detail::utf8_char(s, i, &cp);
      if (n == 0) return false;
      i += n;
    }
    return true;
  }

  // Removes up to `start` leading and `stop` trailing `content` characters (Strip decoder).
  static std::string strip(const std::string& p, char32_t content, std::size_t start, std::size_t stop) {
    std::string c;
    tokenizer_detail::append_utf8(c, content);
    std::size_t b = 0, e = p.size();
    for (std::size_t k = 0; k < start && b + c.size() <= e && p.compare(b, c.size(), c) == 0; ++k) b += c.size();
    for (std::size_t k = 0; k < stop && e >= b + c.size() && p.compare(e - c.size(), c.size(), c) == 0; ++k)
      e -= c.size();
    return p.substr(b, e - b);
  }

  friend class StreamDecoder;
};

// Decodes ids one at a time during generation: step(id) returns the text that id completes. A character spelled
// by several byte-fallback tokens comes out whole once its last byte arrives; bytes that can never form valid
// UTF-8 come out as U+FFFD. The concatenated output equals Tokenizer::decode of all ids whenever every run of
// byte tokens is valid UTF-8 (the case for any text the tokenizer encoded).
//
// The tokenizer must outlive the decoder. It decodes a short window (the previous token or character plus the new ids)
// and returns what the new ids added, so each step costs O(1) decoder work regardless of how much has been generated.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true)
      : tok_(&tokenizer), skip_special_(skip_special) {}

  std::string step(std::int64_t id) {
    tok_->check_id(id, "tokenizer: StreamDecoder::step");
    if (skip_special_ && tok_->is_special(id)) return {};
    window_.push_back(id);
    // Hold back while the trailing byte tokens are the start of a character.
    std::string tail_bytes;
    std::size_t k = window_.size();
    while (k > context_ && tok_->byte_value(window_[k - 1]) >= 0) --k;
    for (std::size_t i = k; i < window_.size(); ++i) tail_bytes += static_cast<char>(tok_->byte_value(window_[i]));
    if (!tail_bytes.empty() && tokenizer_detail::incomplete_utf8_tail(tail_bytes) > 0) return {};

    const std::string text = tok_->decode(window_, skip_special_);
    std::string out;
    if (text.size() >= context_text_.size() && text.compare(0, context_text_.size(), context_text_) == 0) {
      out = text.substr(context_text_.size());
    } else {
      // The decoder changed the context's text (it cannot for the supported steps); restart from this window.
      out = text;
    }
    // Keep the last token as context, or the byte tokens of the last character when it ends in byte tokens.
    std::size_t keep_from = window_.size() - 1;
    if (tok_->byte_value(window_.back()) >= 0) {
      std::size_t first = window_.size();
      std::size_t got = 0;
      while (first > 0 && tok_->byte_value(window_[first - 1]) >= 0 && got < 4) {
        --first;
        ++got;
        const auto lead = static_cast<unsigned char>(tok_->byte_value(window_[first]));
        if ((lead & 0xc0) != 0x80) break;  // reached the lead byte of the last character
      }
      keep_from = first;
    }
    window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(keep_from));
    context_ = window_.size();
    context_text_ = tok_->decode(window_, skip_special_);
    return out;
  }

  // Flushes bytes still held back (an unfinished character) as the decoder renders them (U+FFFD per byte).
  std::string finish() {
    if (window_.size() == context_) return {};
    const std::string text = tok_->decode(window_, skip_special_);
    std::string out = text.size() >= context_text_.size() && text.compare(0, context_text_.size(), context_text_) == 0
                          ? text.substr(context_text_.size())
                          : text;
    window_.clear();
    context_ = 0;
    context_text_.clear();
    return out;
  }

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<std::int64_t> window_;  // context ids (already emitted) followed by held-back ids
  std::size_t context_ = 0;
  std::string context_text_;
};

}  // namespace retnet::io
