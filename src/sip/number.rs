//! Telephone numbers in URIs (RFC 3966 `tel:`, RFC 3261 §19.1.6
//! `user=phone`): the E.164 form the interworking functions and the
//! Participating Functions compare and route on.

/// `+` and 6 to 15 digits (ITU-T E.164's longest number is 15 digits).
pub fn is_e164(n: &str) -> bool {
    n.strip_prefix('+')
        .is_some_and(|d| (6..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The E.164 number (`+` and digits, visual separators `-` `.` `(` `)`
/// dropped) a `tel:` URI or a `sip:`/`sips:` URI with `user=phone` names;
/// `None` for anything else (a local number, another scheme).
pub fn e164_of(uri: &str) -> Option<String> {
    let lower = uri.to_ascii_lowercase();
    let number = if let Some(rest) = lower.strip_prefix("tel:") {
        rest.split(';').next()?
    } else {
        let rest = lower
            .strip_prefix("sip:")
            .or_else(|| lower.strip_prefix("sips:"))?;
        let (user, hostpart) = rest.split_once('@')?;
        if !hostpart.split(';').any(|p| p == "user=phone") {
            return None;
        }
        user.split(';').next()?
    };
    let digits: String = number
        .strip_prefix('+')?
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
        .collect();
    let n = format!("+{digits}");
    is_e164(&n).then_some(n)
}
