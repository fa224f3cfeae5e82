//! XML character references (XML 1.0 §4.1): what the small strict XML
//! readers of this crate (RFC 3680 reg-info, RFC 5366 resource lists)
//! share.

/// The character `&name;` stands for: the five predefined entities (no
/// DTD, so no others) or a character reference to an XML `Char`.
pub fn reference(name: &[u8]) -> Option<char> {
    let code = match name {
        b"amp" => return Some('&'),
        b"lt" => return Some('<'),
        b"gt" => return Some('>'),
        b"quot" => return Some('"'),
        b"apos" => return Some('\''),
        [b'#', b'x', hex @ ..] => number(hex, 16),
        [b'#', dec @ ..] => number(dec, 10),
        _ => None,
    };
    code.and_then(char::from_u32).filter(|&c| is_xml_char(c))
}

/// A non-empty run of digits in `radix` (no sign, unlike `from_str_radix`).
fn number(digits: &[u8], radix: u32) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(|&d| (d as char).is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, radix).ok()
}

/// XML 1.0 `Char`: what a character reference may stand for.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_and_character_references() {
        assert_eq!(reference(b"amp"), Some('&'));
        assert_eq!(reference(b"#x41"), Some('A'));
        assert_eq!(reference(b"#65"), Some('A'));
        assert_eq!(reference(b"#0"), None);
        assert_eq!(reference(b"#x"), None);
        assert_eq!(reference(b"#-1"), None);
        assert_eq!(reference(b"nbsp"), None);
        assert_eq!(reference(b"#xD800"), None);
    }
}
