//! Outside text in log lines and reports: whatever a Redis publisher, a client or a server sends
//! is cut to a sane length with its size noted, so nobody who can publish can fill the disk.

/// Longest outside text kept in one log line or report field.
pub const MAX_ECHO: usize = 200;

/// `text` cut to [`MAX_ECHO`] bytes (at a character boundary), with its length noted when cut.
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_ECHO {
        return text.to_owned();
    }
    let mut end = MAX_ECHO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_with_its_size() {
        assert_eq!(clip("short"), "short");
        let long = clip(&"é".repeat(1000));
        assert!(long.ends_with("… (2000 bytes)"), "{long}");
        assert!(long.len() <= MAX_ECHO + 20);
    }
}
