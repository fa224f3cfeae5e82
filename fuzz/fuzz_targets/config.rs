//! Any bytes as a TOML configuration through parse + validate (+ the table
//! snapshot a valid one becomes): an error naming the key, never a panic.
#![no_main]

use cpm_edge::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `validate` reads the groups file a config names: not the fuzzer's business.
    if text.contains("groups_file") {
        return;
    }
    match Config::parse(text).and_then(|c| c.validate()) {
        Ok(v) => {
            let t = v.tables();
            assert_eq!(t.groups.len(), v.groups.len());
            assert_eq!(t.shards.len(), v.shards.len());
        }
        Err(e) => assert!(!e.key.is_empty() && !e.reason.is_empty(), "{e}"),
    }
});
