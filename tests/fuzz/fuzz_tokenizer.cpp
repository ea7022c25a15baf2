// libFuzzer target for retnet::io::Tokenizer. The first input byte picks what the rest is:
//   0: text to encode with the committed Llama-family tokenizer (tests/data/tokenizer/tokenizer.json); valid
//      UTF-8 must round-trip through decode and the streaming decoder,
//   1: token ids (two bytes each) to decode, in one call and streamed,
//   2: a tokenizer.json to parse; when it loads, a few strings are encoded and decoded with it.
// Anything but retnet::Error escaping, or a broken invariant, aborts.
//
// The fixture's path: the macro RETNET_TEST_DATA_DIR (as the test programs get it), or the environment variable
// RETNET_TOKENIZER_JSON.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "retnet/io/tokenizer.hpp"

namespace {

const retnet::io::Tokenizer& fixture() {
  static const retnet::io::Tokenizer t = [] {
    std::string path;
    if (const char* env = std::getenv("RETNET_TOKENIZER_JSON")) {
      path = env;
    } else {
#ifdef RETNET_TEST_DATA_DIR
      path = std::string(RETNET_TEST_DATA_DIR) + "/tokenizer/tokenizer.json";
#else
      std::abort();  // no fixture: set RETNET_TOKENIZER_JSON
#endif
    }
    return retnet::io::Tokenizer::from_file(path);
  }();
  return t;
}

bool valid_utf8(std::string_view s) {
  char32_t cp;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = retnet::io::tokenizer_detail::utf8_char(s, i, &cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string streamed(const retnet::io::Tokenizer& t, const std::vector<std::int64_t>& ids, bool skip_special) {
  retnet::io::StreamDecoder d(t, skip_special);
  std::string out;
  for (std::int64_t id : ids) out += d.step(id);
  return out + d.finish();
}

void check(bool ok) {
  if (!ok) std::abort();
}

void fuzz_encode(std::string_view text) {
  const retnet::io::Tokenizer& t = fixture();
  if (!valid_utf8(text)) {
    try {
      (void)t.encode(text);
    } catch (const retnet::Error&) {
      return;
    }
    std::abort();  // invalid UTF-8 must be refused
  }
  const std::vector<std::int64_t> ids = t.encode(text, true, /*parse_special=*/false);
  if (text.find("\xE2\x96\x81") == std::string_view::npos) {  // "▁" cannot round-trip
    check(t.decode(ids, true) == text);
    check(streamed(t, ids, true) == text);
  }
  const std::vector<std::int64_t> parsed = t.encode(text, true);
  check(streamed(t, parsed, false) == t.decode(parsed, false));
}

void fuzz_decode(std::string_view bytes) {
  const retnet::io::Tokenizer& t = fixture();
  std::vector<std::int64_t> ids;
  for (std::size_t i = 0; i + 1 < bytes.size(); i += 2) {
    const auto v =
        static_cast<std::int64_t>(static_cast<unsigned char>(bytes[i]) << 8 | static_cast<unsigned char>(bytes[i + 1]));
    // Mostly the byte tokens and the low ids, sometimes anything up to 65535 (past the vocabulary).
    ids.push_back(v < 0xf000 ? v % 300 : v);
  }
  bool in_range = true;
  for (std::int64_t id : ids) in_range = in_range && id < t.vocab_size();
  try {
    const std::string a = t.decode(ids, false);
    const std::string b = t.decode(ids, true);
    check(in_range);
    (void)streamed(t, ids, false);
    (void)streamed(t, ids, true);
  } catch (const retnet::Error&) {
    check(!in_range);
  }
}

void fuzz_parse(std::string_view json) {
  try {
    const retnet::io::Tokenizer t = retnet::io::Tokenizer::from_json_string(json, "fuzz");
    for (const char* s : {"", "Hello world", " a  b\t\n", "<s>x</s>", "\xF0\x9F\x99\x82 \xE4\xB8\xAD"}) {
      try {
        const std::vector<std::int64_t> ids = t.encode(s);
        (void)t.decode(ids);
        (void)streamed(t, ids, true);
      } catch (const retnet::Error&) {
        // e.g. a character missing from a vocabulary without unk_token or byte fallback
      }
    }
  } catch (const retnet::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      fuzz_encode(rest);
      break;
    case 1:
      fuzz_decode(rest);
      break;
    default:
      fuzz_parse(rest);
      break;
  }
  return 0;
}
