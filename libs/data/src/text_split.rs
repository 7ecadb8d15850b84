//! Byte-range splits of CSV and JSON-lines files, so that one large file
//! is read by several tasks at once.
//!
//! A file larger than the split size is cut into ranges `[s, e)` of that
//! many bytes. A range owns the lines that start in `(s, e]` (and the
//! file's first line, for the range at 0): it skips to just after the
//! first `\n` at or after `s` (the line straddling `s` is the previous
//! range's), and reads up to and including the first `\n` at or after `e`
//! (or the end of the file). Every line is thus read by exactly one range,
//! and a range with no line start in it reads nothing. `\r\n` ends a line
//! as `\n` does (the `\r` stays with its line, where the parsers skip it).
//!
//! Byte splits assume that no record goes on over a split point: no line
//! break inside a quoted CSV field there, no JSON object over several lines
//! there. A split range checks its end before its parser sees it (CSV: an
//! even number of `"` in its lines; JSON: `}` last, `{` next after them),
//! and fails naming the file, the range and the byte rather than read wrong
//! rows. So a record over several lines reads right inside a range, and
//! fails across a split point (where those fall depends on the split size).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

/// How [`Dataset::read_csv_with`](crate::Dataset::read_csv_with) and
/// [`Dataset::read_json_with`](crate::Dataset::read_json_with) read files.
///
/// A file larger than `split_bytes` is read by several tasks at once, one
/// per byte range, in the manner of Spark's and Ray's 64 MiB splits; its
/// rows come out in file order all the same. Each range reads the lines
/// that start in it, so a split assumes that no record goes on past the
/// line break it falls on: a CSV file whose quoted fields hold line breaks,
/// or a JSON file with objects over several lines, should be read whole
/// ([`whole_files`](Self::whole_files)). A split that falls inside such a
/// record fails, naming the file, the range and the byte, rather than read
/// wrong rows (CSV: a range whose lines hold an odd number of `"`, taking
/// each `"` to open or close a quoted field as RFC 4180 does; an unquoted
/// `5'11"` can make a split fail too: read such a file whole).
///
/// ```no_run
/// use troupe_data::{Dataset, TextReadOptions};
///
/// # fn f(rt: &troupe::Runtime) -> Result<(), troupe_data::DataError> {
/// // Tasks of 16 MiB each.
/// let ds = Dataset::read_csv_with(rt, &["big.csv"], TextReadOptions::new().split_bytes(16 << 20))?;
/// // One task per file (quoted fields may hold line breaks).
/// let notes = Dataset::read_csv_with(rt, &["notes.csv"], TextReadOptions::new().whole_files())?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextReadOptions {
    /// Bytes per read task (default 64 MiB): a larger file is split into
    /// ranges of this size. `None`: one task per file.
    pub split_bytes: Option<u64>,
}

impl Default for TextReadOptions {
    fn default() -> Self {
        TextReadOptions {
            split_bytes: Some(64 << 20),
        }
    }
}

impl TextReadOptions {
    /// The defaults: splits of 64 MiB.
    pub fn new() -> Self {
        Self::default()
    }
    /// Splits files into ranges of `bytes` (at least 1) per read task.
    pub fn split_bytes(mut self, bytes: u64) -> Self {
        self.split_bytes = Some(bytes.max(1));
        self
    }
    /// One read task per file, however large: for CSV whose quoted fields
    /// hold line breaks, or JSON objects over several lines.
    pub fn whole_files(mut self) -> Self {
        self.split_bytes = None;
        self
    }
}

/// The byte ranges a file of `len` bytes is read in: the whole file when
/// it fits one split (or splitting is off).
pub(crate) fn ranges(len: u64, split: Option<u64>) -> Vec<Range<u64>> {
    match split {
        Some(split) if len > split.max(1) => {
            let split = split.max(1);
            (0..len.div_ceil(split))
                .map(|i| i * split..((i + 1) * split).min(len))
                .collect()
        }
        _ => std::iter::once(0..len).collect(),
    }
}

/// What a split range checks at its ends, so that it never reads a record
/// a split point cut (the ranges of a file together check every one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SplitCheck {
    /// CSV: an even number of `"` in the range's lines. A range starts
    /// outside any quoted field (the range before checked that), so it ends
    /// outside one, every `"` opening or closing a quoted field (RFC 4180's
    /// `""` escapes come in pairs).
    Csv,
    /// JSON lines: the last byte other than whitespace of its lines is `}`,
    /// and the next one after them `{` (or the end of the file): `}` and
    /// `{` never follow each other inside one JSON value (a `,` goes
    /// between), and no JSON string holds a raw line break. (A range starts
    /// where the one before ended, checked; the first, at the file's start.)
    Json,
}

/// JSON's whitespace.
fn blank(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Whether `bytes` hold an odd number of `"`, eight bytes a step: a byte
/// of `x = word ^ 0x22..22` is 0 where `word`'s is `"`, and exactly those
/// get their top bit set in `!(((x & 0x7f..7f) + 0x7f..7f) | x | 0x7f..7f)`;
/// the XOR of these marks has as many bits as there are quotes, modulo 2.
/// (The compiler does a plain count a byte or four at a time: a tenth of a
/// split's read time, against about 1% so.)
fn odd_quotes(bytes: &[u8]) -> bool {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const QUOTES: u64 = 0x2222_2222_2222_2222;
    let mut marks = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ QUOTES;
        marks ^= !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
    }
    let rest = chunks.remainder().iter().filter(|&&b| b == b'"').count();
    (marks.count_ones() as usize + rest) % 2 == 1
}

/// The advice every split error ends with.
const WHOLE: &str = "byte-range splits cannot read it; read the file whole \
                     (TextReadOptions::whole_files())";

fn json_cut(at: u64) -> String {
    format!("a JSON object goes on over several lines at byte {at}: {WHOLE}")
}

/// Why the bytes of a split range cannot be read (kept apart from the
/// parsers' errors, whose hints do not apply).
#[derive(Debug)]
pub(crate) struct SplitError(pub(crate) String);

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SplitError {}

/// The message of a [`SplitError`] inside an Arrow error, if it is one.
pub(crate) fn split_error(e: &arrow_schema::ArrowError) -> Option<&str> {
    match e {
        arrow_schema::ArrowError::IoError(_, e) => e
            .get_ref()
            .and_then(|e| e.downcast_ref::<SplitError>())
            .map(|e| e.0.as_str()),
        _ => None,
    }
}

/// The bytes of the lines a range owns, as a `BufRead`, checked at their
/// ends before the parser sees them.
pub(crate) struct RangeReader {
    inner: BufReader<File>,
    /// The position in the file of the next byte `fill_buf` gives.
    pos: u64,
    /// The range's end: it reads on to the first `\n` at or after it.
    end: u64,
    /// Where it stops, once that `\n` is found (or at once, when no line starts in the range).
    stop: Option<u64>,
    /// Where its lines start.
    start: u64,
    /// Bytes up to here have been checked.
    checked: u64,
    check: SplitCheck,
    /// CSV: an odd number of `"` so far.
    odd_quotes: bool,
    /// JSON: the last byte other than whitespace so far.
    last: Option<u8>,
    /// A check failed: every later read gives this error.
    failed: Option<String>,
    /// The end was checked.
    finished: bool,
}

/// Read buffer per range (larger than `BufReader`'s 8 KiB default: fewer
/// calls into the parsers).
const BUFFER: usize = 256 << 10;

impl RangeReader {
    /// `range` of the file at `path`, positioned at the first line it owns.
    pub(crate) fn open(path: &Path, range: Range<u64>, check: SplitCheck) -> io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(range.start))?;
        let mut inner = BufReader::with_capacity(BUFFER, file);
        let mut pos = range.start;
        let mut stop = None;
        if range.start > 0 {
            // Skip the end of the line straddling the start: the previous
            // range reads it.
            loop {
                let buf = inner.fill_buf()?;
                if buf.is_empty() {
                    stop = Some(pos);
                    break;
                }
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        inner.consume(i + 1);
                        pos += i as u64 + 1;
                        break;
                    }
                    None => {
                        let n = buf.len();
                        inner.consume(n);
                        pos += n as u64;
                    }
                }
            }
            // No line starts in the range: it reads nothing.
            if pos > range.end {
                stop = Some(pos);
            }
        }
        Ok(RangeReader {
            inner,
            pos,
            end: range.end,
            stop,
            start: pos,
            checked: pos,
            check,
            odd_quotes: false,
            last: None,
            failed: None,
            finished: false,
        })
    }

    fn fail(message: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, SplitError(message.to_string()))
    }

    /// The first byte other than whitespace after the range's lines, if any
    /// (it reads past them: only once they are all read).
    fn next_non_blank(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            if let Some(&b) = buf.iter().find(|b| !blank(b)) {
                return Ok(Some(b));
            }
            let n = buf.len();
            self.inner.consume(n);
        }
    }

    /// Checks the end of the range's lines, all read.
    fn check_end(&mut self) -> Result<(), String> {
        let end = self.checked;
        // Nothing more is read, whatever is consumed below.
        self.stop = Some(self.pos);
        match self.check {
            SplitCheck::Csv if self.odd_quotes => Err(format!(
                "its lines (bytes {}..{end}) hold an odd number of '\"': a quoted field holds a \
                 line break at its ends; {WHOLE}",
                self.start
            )),
            // Lines all blank: the range before looked past them.
            SplitCheck::Json if self.last.is_some() => {
                let next = self.next_non_blank().map_err(|e| e.to_string())?;
                match (self.last, next) {
                    (Some(b'}'), None | Some(b'{')) => Ok(()),
                    _ => Err(json_cut(end)),
                }
            }
            _ => Ok(()),
        }
    }
}

impl BufRead for RangeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(message) = &self.failed {
            return Err(Self::fail(message));
        }
        let at_stop = self.stop.is_some_and(|stop| self.pos >= stop);
        let available = if at_stop {
            0
        } else {
            let buf = self.inner.fill_buf()?;
            let upto = |to: u64| {
                buf.len()
                    .min(usize::try_from(to - self.pos).unwrap_or(usize::MAX))
            };
            let n = match self.stop {
                Some(stop) => upto(stop),
                None if self.pos < self.end => upto(self.end),
                None => match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.stop = Some(self.pos + i as u64 + 1);
                        i + 1
                    }
                    None => buf.len(),
                },
            };
            // Look at what has not been looked at before the parser sees it.
            let from = usize::try_from(self.checked - self.pos).map_or(n, |from| from.min(n));
            let unchecked = &buf[from..n];
            match self.check {
                SplitCheck::Csv => self.odd_quotes ^= odd_quotes(unchecked),
                SplitCheck::Json => {
                    if let Some(&b) = unchecked.iter().rev().find(|b| !blank(b)) {
                        self.last = Some(b);
                    }
                }
            }
            self.checked = self.checked.max(self.pos + n as u64);
            n
        };
        if available == 0 && !self.finished {
            self.finished = true;
            if let Err(message) = self.check_end() {
                self.failed = Some(message);
            }
        }
        if let Some(message) = &self.failed {
            return Err(Self::fail(message));
        }
        if available == 0 {
            return Ok(&[]);
        }
        Ok(&self.inner.buffer()[..available])
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
        self.pos += amt as u64;
    }
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes each range of `text` reads, split every `split` bytes.
    fn pieces(text: &[u8], split: u64, check: SplitCheck) -> Result<Vec<Vec<u8>>, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("f");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        ranges(text.len() as u64, Some(split))
            .into_iter()
            .map(|range| {
                let mut out = Vec::new();
                RangeReader::open(&path, range, check)
                    .and_then(|mut r| r.read_to_end(&mut out))
                    .map_err(|e| e.to_string())?;
                Ok(out)
            })
            .collect()
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // One range: the whole file.
    fn ranges_cover_the_file_in_splits() {
        assert_eq!(ranges(10, Some(4)), [0..4, 4..8, 8..10]);
        assert_eq!(ranges(8, Some(4)), [0..4, 4..8]);
        assert_eq!(ranges(4, Some(4)), [0..4]);
        assert_eq!(ranges(0, Some(4)), [0..0]);
        assert_eq!(ranges(100, None), [0..100]);
        assert_eq!(ranges(3, Some(0)), [0..1, 1..2, 2..3]);
    }

    #[test]
    fn odd_quotes_is_the_parity_of_the_quotes() {
        // Every byte value (`"` one time in four), at every alignment.
        let mut state = 1u64;
        let bytes: Vec<u8> = (0..700)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                match state >> 62 {
                    0 => b'"',
                    _ => (state >> 32) as u8,
                }
            })
            .collect();
        for start in 0..20 {
            for end in (start..bytes.len()).step_by(3) {
                let bytes = &bytes[start..end];
                let quotes = bytes.iter().filter(|&&b| b == b'"').count();
                assert_eq!(odd_quotes(bytes), quotes % 2 == 1, "{start}..{end}");
            }
        }
    }

    #[test]
    fn every_line_is_read_by_exactly_one_range_at_every_split_size() {
        let texts: [&[u8]; 6] = [
            b"a,b\n1,2\n33,44\n555,666\n",
            b"a,b\r\n1,2\r\n33,44\r\n555,666",
            b"h\n\n\nx\n\n",
            b"short\na much longer line than any split here\nz\n",
            b"no newline at all",
            b"",
        ];
        for text in texts {
            for split in 1..=text.len() as u64 + 1 {
                let got = pieces(text, split, SplitCheck::Csv).expect("reads");
                assert_eq!(got.concat(), text, "split {split} of {text:?}");
                // Whole lines, but for the last (which may lack its `\n`).
                let last = got.iter().rposition(|p| !p.is_empty()).unwrap_or(0);
                for piece in &got[..last] {
                    assert!(
                        piece.is_empty() || piece.ends_with(b"\n"),
                        "whole lines: {piece:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_record_across_a_split_point_is_an_error_naming_the_bytes() {
        // Split every 5 bytes, the first range reads `a,b\n1,"two\n`.
        let csv = b"a,b\n1,\"two\nlines\"\n3,4\n";
        let err = pieces(csv, 5, SplitCheck::Csv).expect_err("odd quotes");
        assert!(
            err.contains("its lines (bytes 0..11) hold an odd number"),
            "{err}"
        );
        // Inside one range, a quoted line break reads.
        assert_eq!(
            pieces(csv, 12, SplitCheck::Csv).expect("reads").concat(),
            csv
        );
        // The range at 8 reads `{"a":\n`, not ending an object.
        let json = b"{\"a\": 1}\n{\"a\":\n 2}\n";
        let err = pieces(json, 4, SplitCheck::Json).expect_err("an object over two lines");
        assert!(err.contains("over several lines at byte 15"), "{err}");
        // The first range ends with `}`, but the next line starts with `}`:
        // the split point at byte 15 is inside an object.
        let json = b"{\"a\": {\"b\": 1}\n}\n{}\n";
        let err = pieces(json, 14, SplitCheck::Json).expect_err("an object over two lines");
        assert!(err.contains("over several lines at byte 15"), "{err}");
        // Escaped quotes, CRLF and blank lines are fine.
        let ok = b"a,b\r\n\"x \"\"y\"\"\",2\r\n\r\n";
        assert_eq!(pieces(ok, 3, SplitCheck::Csv).expect("reads").concat(), ok);
        let ok = b"{\"a\": \"}\"}\r\n  \n{}";
        assert_eq!(pieces(ok, 3, SplitCheck::Json).expect("reads").concat(), ok);
    }
}
