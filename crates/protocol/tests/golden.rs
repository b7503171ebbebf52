//! Data-driven golden tests: `tests/golden/client.txt` and `tests/golden/server.txt` hold
//! sample frames in both directions and what must come of them.
//!
//! Both files are blocks of lines separated by blank lines; `#` starts a comment line. Each
//! line is a keyword, spaces, and a value. In any value, `<<TEXT*N>>` stands for TEXT
//! repeated N times (split at the last `*`), for inputs too long to write out.
//!
//! `client.txt` blocks, checked with `parse_client_frame`:
//! - `in <frame>`: the text frame;
//! - `max <bytes>`: optional, the payload limit (default 102400);
//! - `ok <frame>`: it decodes, and re-encodes to exactly this (`ok` alone: the input itself);
//! - `err <code> kind=<type or -> messageId=<id or -> | <message>`: it is refused exactly so.
//!
//! `server.txt` blocks, checked with `ServerMessage` and `encode_batch`:
//! - `in <frame>` then optionally `out <frame>`: it decodes, and re-encodes to `out` (or to
//!   the input itself);
//! - `in <frame>` then `err <text>`: decoding fails with an error containing the text;
//! - one or more `batch <frame>` then `out <frame>`: `encode_batch` of the frames gives `out`,
//!   which decodes to messages that re-encode to the frames, in order.

use std::fmt::Write as _;

use herald_protocol::{Limits, ServerMessage, encode_batch, parse_client_frame};

/// The payload limit when a block sets none: `HERALD_MAX_PAYLOAD_BYTES`' default.
const DEFAULT_MAX: usize = 102_400;

/// One line of a block: its number in the file, keyword and expanded value.
struct Line {
    number: usize,
    keyword: String,
    value: String,
}

/// Reads a golden file into blocks of lines.
fn blocks(name: &str) -> Vec<Vec<Line>> {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let mut blocks = vec![Vec::new()];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            blocks.push(Vec::new());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (keyword, value) = line.split_once(' ').unwrap_or((line, ""));
        if let Some(block) = blocks.last_mut() {
            block.push(Line {
                number: i + 1,
                keyword: keyword.to_owned(),
                value: expand(value.trim_start()),
            });
        }
    }
    blocks.retain(|block| !block.is_empty());
    blocks
}

/// Expands every `<<TEXT*N>>` in `value`.
fn expand(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("<<") {
        let end = rest[start..]
            .find(">>")
            .map(|end| start + end)
            .unwrap_or_else(|| panic!("unclosed `<<` in {value}"));
        let inner = &rest[start + 2..end];
        let (text, count) = inner
            .rsplit_once('*')
            .unwrap_or_else(|| panic!("`<<{inner}>>` needs `*N`"));
        let count: usize = count
            .parse()
            .unwrap_or_else(|_| panic!("bad count in {inner}"));
        out.push_str(&rest[..start]);
        out.push_str(&text.repeat(count));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Checks every block with `check`, then fails once listing every mismatch.
fn run(name: &str, check: impl Fn(&[Line]) -> Result<(), String>) {
    let blocks = blocks(name);
    assert!(!blocks.is_empty(), "{name} holds no blocks");
    let mut failures = String::new();
    for block in &blocks {
        if let Err(message) = check(block) {
            let _ = writeln!(failures, "{name}:{}: {message}", block[0].number);
        }
    }
    assert!(failures.is_empty(), "golden mismatches:\n{failures}");
}

/// Finds the single line with `keyword` in a block.
fn value<'a>(block: &'a [Line], keyword: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|line| line.keyword == keyword)
        .map(|line| line.value.as_str())
}

/// Shortens a long input for a failure message.
fn short(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}... ({} bytes)", &text[..end], text.len()),
        None => text.to_owned(),
    }
}

#[test]
fn client_frames_decode_as_the_golden_file_says() {
    run("client.txt", |block| {
        for line in block {
            if !["in", "max", "ok", "err"].contains(&line.keyword.as_str()) {
                return Err(format!(
                    "line {}: unknown keyword `{}`",
                    line.number, line.keyword
                ));
            }
        }
        let input = value(block, "in").ok_or("block has no `in`")?;
        let max = match value(block, "max") {
            Some(max) => max.parse().map_err(|_| format!("bad max `{max}`"))?,
            None => DEFAULT_MAX,
        };
        let actual = match parse_client_frame(input, &Limits::new(max)) {
            Ok(frame) => format!("ok {}", frame.encode()),
            Err(err) => format!(
                "err {} kind={} messageId={} | {}",
                err.code,
                err.kind.map_or("-", |kind| kind.as_str()),
                err.message_id.as_deref().unwrap_or("-"),
                err.message
            ),
        };
        let expected = match (value(block, "ok"), value(block, "err")) {
            (Some(""), None) => format!("ok {input}"),
            (Some(frame), None) => format!("ok {frame}"),
            (None, Some(err)) => format!("err {err}"),
            _ => return Err("block needs exactly one of `ok` and `err`".to_owned()),
        };
        if actual == expected {
            Ok(())
        } else {
            Err(format!(
                "in {}\n  expected {}\n  actual   {}",
                short(input),
                short(&expected),
                short(&actual)
            ))
        }
    });
}

#[test]
fn server_frames_encode_as_the_golden_file_says() {
    run("server.txt", |block| {
        let batch: Vec<&str> = block
            .iter()
            .filter(|line| line.keyword == "batch")
            .map(|line| line.value.as_str())
            .collect();
        if !batch.is_empty() {
            let out = value(block, "out").ok_or("a batch block needs `out`")?;
            let joined = String::from_utf8(encode_batch(batch.iter().map(|f| f.as_bytes())))
                .map_err(|e| e.to_string())?;
            if joined != out {
                return Err(format!("encode_batch gave\n  {joined}\nexpected\n  {out}"));
            }
            let Ok(ServerMessage::Batch { data }) = ServerMessage::decode(out) else {
                return Err(format!("`{out}` does not decode to a batch"));
            };
            let frames: Vec<String> = data.iter().map(ServerMessage::encode).collect();
            return if frames == batch {
                Ok(())
            } else {
                Err(format!("the batch decodes to {frames:?}"))
            };
        }
        let input = value(block, "in").ok_or("block has no `in` or `batch`")?;
        match (ServerMessage::decode(input), value(block, "err")) {
            (Ok(message), None) => {
                let expected = value(block, "out").unwrap_or(input);
                let actual = message.encode();
                if actual == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "in {}\n  expected {expected}\n  actual   {actual}",
                        short(input)
                    ))
                }
            }
            (Err(err), Some(expected)) if err.to_string().contains(expected) => Ok(()),
            (Err(err), _) => Err(format!("in {}\n  decode failed: {err}", short(input))),
            (Ok(message), Some(expected)) => Err(format!(
                "in {}\n  expected an error containing `{expected}`, decoded {message:?}",
                short(input)
            )),
        }
    });
}
