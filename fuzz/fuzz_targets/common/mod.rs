//! What the admin fuzz targets share: one control plane, output checks.

use cpm_edge::config::{Config, Valid};
use cpm_edge::control::ControlPlane;
use cpm_edge::dataplane::stats::WorkerStats;
use cpm_edge::io::IoBackend;
use cpm_edge::route::shards::MAX_SHARDS;
use std::sync::{Arc, OnceLock};

/// One control plane built from the embedded default configuration.
pub fn cp() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        let v: Valid = Config::default_embedded()
            .validate()
            .expect("default config");
        let tables = Arc::new(v.tables());
        let stats = vec![Arc::new(WorkerStats::new(MAX_SHARDS))];
        ControlPlane::new(Arc::new(tables.into()), stats, IoBackend::Mmsg, v)
    })
}

/// Every line a comment, empty, or `name[{labels}] value`.
pub fn prometheus_text(text: &str) -> bool {
    text.lines().all(|l| {
        if l.is_empty() || l.starts_with('#') {
            return true;
        }
        let Some((series, value)) = l.rsplit_once(' ') else {
            return false;
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        let labels_ok = name_end == series.len() || series.ends_with('}');
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            && !name.as_bytes()[0].is_ascii_digit()
            && labels_ok
            && (value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"))
    })
}

/// A strict RFC 8259 validator (the fuzz crate has no JSON library).
pub mod json {
    pub fn valid(s: &[u8]) -> bool {
        let mut p = P { s, i: 0 };
        p.ws();
        p.value(0) && {
            p.ws();
            p.i == s.len()
        }
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }
        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }
        fn lit(&mut self, l: &[u8]) -> bool {
            if self.s[self.i..].starts_with(l) {
                self.i += l.len();
                true
            } else {
                false
            }
        }
        fn digits(&mut self) -> usize {
            let st = self.i;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.i += 1;
            }
            self.i - st
        }
        fn value(&mut self, depth: usize) -> bool {
            if depth > 128 {
                return false;
            }
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return true;
                    }
                    loop {
                        self.ws();
                        if !self.string() {
                            return false;
                        }
                        self.ws();
                        if !self.lit(b":") {
                            return false;
                        }
                        self.ws();
                        if !self.value(depth + 1) {
                            return false;
                        }
                        self.ws();
                        if self.lit(b",") {
                            continue;
                        }
                        return self.lit(b"}");
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return true;
                    }
                    loop {
                        self.ws();
                        if !self.value(depth + 1) {
                            return false;
                        }
                        self.ws();
                        if self.lit(b",") {
                            continue;
                        }
                        return self.lit(b"]");
                    }
                }
                Some(b'"') => self.string(),
                Some(b't') => self.lit(b"true"),
                Some(b'f') => self.lit(b"false"),
                Some(b'n') => self.lit(b"null"),
                Some(b'-' | b'0'..=b'9') => {
                    self.lit(b"-");
                    if self.lit(b"0") {
                    } else if self.digits() == 0 {
                        return false;
                    }
                    if self.lit(b".") && self.digits() == 0 {
                        return false;
                    }
                    if matches!(self.peek(), Some(b'e' | b'E')) {
                        self.i += 1;
                        if matches!(self.peek(), Some(b'+' | b'-')) {
                            self.i += 1;
                        }
                        if self.digits() == 0 {
                            return false;
                        }
                    }
                    true
                }
                _ => false,
            }
        }
        fn string(&mut self) -> bool {
            if !self.lit(b"\"") {
                return false;
            }
            let start = self.i;
            loop {
                match self.peek() {
                    None => return false,
                    Some(b'"') => {
                        self.i += 1;
                        return std::str::from_utf8(&self.s[start..self.i - 1]).is_ok();
                    }
                    Some(b'\\') => {
                        self.i += 1;
                        match self.peek() {
                            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                                self.i += 1
                            }
                            Some(b'u') => {
                                self.i += 1;
                                for _ in 0..4 {
                                    if !self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
                                        return false;
                                    }
                                    self.i += 1;
                                }
                            }
                            _ => return false,
                        }
                    }
                    Some(c) if c < 0x20 => return false,
                    Some(_) => self.i += 1,
                }
            }
        }
    }
}
