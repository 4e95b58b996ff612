//! The AMQP 1.0 type system (part 1 of the specification) read in place and written by hand.
//!
//! [`Reader`] walks an encoded buffer and hands out [`Value`]s that borrow from it: strings, symbols
//! and binaries are slices of the input, lists and maps are [`Compound`]s over their encoded bytes, and
//! a described value keeps its value encoded. Nothing is allocated, so the per-message hot paths (the
//! engine's decoder, the emulator's stamping) cost a walk over the bytes and no more. Every read is
//! bounds-checked and fails with [`Error::Malformed`] on truncated or inconsistent input; hostile input
//! cannot make a reader panic, loop or allocate (the fuzz target `amqp_message` checks this).
//!
//! The `put_*` functions write the few encodings the hot paths produce (transfer and flow frames,
//! stamped annotations), always in the smallest form, as the specification recommends.

use std::fmt;

use crate::{Error, Result};

/// Format codes (part 1, section 1.6).
pub mod code {
    #![allow(missing_docs)]
    pub const DESCRIBED: u8 = 0x00;
    pub const NULL: u8 = 0x40;
    pub const TRUE: u8 = 0x41;
    pub const FALSE: u8 = 0x42;
    pub const UINT0: u8 = 0x43;
    pub const ULONG0: u8 = 0x44;
    pub const LIST0: u8 = 0x45;
    pub const UBYTE: u8 = 0x50;
    pub const BYTE: u8 = 0x51;
    pub const SMALL_UINT: u8 = 0x52;
    pub const SMALL_ULONG: u8 = 0x53;
    pub const SMALL_INT: u8 = 0x54;
    pub const SMALL_LONG: u8 = 0x55;
    pub const BOOLEAN: u8 = 0x56;
    pub const USHORT: u8 = 0x60;
    pub const SHORT: u8 = 0x61;
    pub const UINT: u8 = 0x70;
    pub const INT: u8 = 0x71;
    pub const FLOAT: u8 = 0x72;
    pub const CHAR: u8 = 0x73;
    pub const DECIMAL32: u8 = 0x74;
    pub const ULONG: u8 = 0x80;
    pub const LONG: u8 = 0x81;
    pub const DOUBLE: u8 = 0x82;
    pub const TIMESTAMP: u8 = 0x83;
    pub const DECIMAL64: u8 = 0x84;
    pub const DECIMAL128: u8 = 0x94;
    pub const UUID: u8 = 0x98;
    pub const VBIN8: u8 = 0xa0;
    pub const STR8: u8 = 0xa1;
    pub const SYM8: u8 = 0xa3;
    pub const VBIN32: u8 = 0xb0;
    pub const STR32: u8 = 0xb1;
    pub const SYM32: u8 = 0xb3;
    pub const LIST8: u8 = 0xc0;
    pub const MAP8: u8 = 0xc1;
    pub const LIST32: u8 = 0xd0;
    pub const MAP32: u8 = 0xd1;
    pub const ARRAY8: u8 = 0xe0;
    pub const ARRAY32: u8 = 0xf0;
}

/// A descriptor of a described value: a numeric code or a symbolic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor<'a> {
    /// `domain:id` packed in a ulong, e.g. `0x75` for `amqp:data:binary`.
    Code(u64),
    /// The symbolic name, e.g. `amqp:data:binary`.
    Symbol(&'a str),
}

/// The elements of a list or the entries of a map (keys and values alternate), still encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Compound<'a> {
    /// Number of elements (for a map: keys plus values).
    pub count: u32,
    /// The encoded elements, back to back.
    pub body: &'a [u8],
}

impl fmt::Debug for Compound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compound")
            .field("count", &self.count)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl<'a> Compound<'a> {
    /// A reader over the elements.
    pub fn reader(&self) -> Reader<'a> {
        Reader::new(self.body)
    }

    /// The elements in order; a malformed element ends the iteration with an error.
    pub fn iter(&self) -> Elements<'a> {
        Elements {
            reader: self.reader(),
            left: self.count,
        }
    }
}

/// Iterator over the elements of a [`Compound`].
#[derive(Debug)]
pub struct Elements<'a> {
    reader: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Value<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let value = self.reader.read_value();
        if value.is_err() {
            self.left = 0;
        }
        Some(value)
    }
}

/// An encoded array: one constructor shared by `count` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayView<'a> {
    /// Number of elements.
    pub count: u32,
    /// The element constructor followed by the elements' data.
    pub body: &'a [u8],
}

/// One decoded value. Variable-width data borrows from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// `null`.
    Null,
    /// `boolean`.
    Bool(bool),
    /// `ubyte`.
    Ubyte(u8),
    /// `ushort`.
    Ushort(u16),
    /// `uint`.
    Uint(u32),
    /// `ulong`.
    Ulong(u64),
    /// `byte`.
    Byte(i8),
    /// `short`.
    Short(i16),
    /// `int`.
    Int(i32),
    /// `long`.
    Long(i64),
    /// `float`.
    Float(f32),
    /// `double`.
    Double(f64),
    /// `decimal32`, IEEE 754 bytes as sent.
    Decimal32([u8; 4]),
    /// `decimal64`, IEEE 754 bytes as sent.
    Decimal64([u8; 8]),
    /// `decimal128`, IEEE 754 bytes as sent.
    Decimal128([u8; 16]),
    /// `char`.
    Char(char),
    /// `timestamp`: milliseconds since the Unix epoch.
    Timestamp(i64),
    /// `uuid`.
    Uuid([u8; 16]),
    /// `binary`.
    Binary(&'a [u8]),
    /// `string`.
    String(&'a str),
    /// `symbol` (ASCII, checked as UTF-8).
    Symbol(&'a str),
    /// `list`.
    List(Compound<'a>),
    /// `map`.
    Map(Compound<'a>),
    /// `array`.
    Array(ArrayView<'a>),
    /// A described value; its value stays encoded.
    Described(Descriptor<'a>, &'a [u8]),
}

impl<'a> Value<'a> {
    /// The text of a `string` or `symbol`.
    pub fn as_text(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) | Value::Symbol(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// A cursor over encoded AMQP data.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.position >= self.bytes.len()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.position.min(self.bytes.len())..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .position
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                malformed(format!(
                    "{n} bytes needed at byte {} of {}",
                    self.position,
                    self.bytes.len()
                ))
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.fixed::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.fixed()?))
    }

    /// The next format code, without consuming it.
    pub fn peek_code(&self) -> Result<u8> {
        self.bytes
            .get(self.position)
            .copied()
            .ok_or_else(|| malformed("a value was expected but the data ended"))
    }

    /// The size and count header of a compound or array encoding whose code was just read.
    fn sized(&mut self, code: u8) -> Result<(u32, &'a [u8])> {
        let wide = code & 0xf0 == 0xd0 || code & 0xf0 == 0xf0;
        let size = if wide {
            self.u32()?
        } else {
            u32::from(self.u8()?)
        };
        let width = if wide { 4 } else { 1 };
        let body = self.take(size as usize)?;
        if (size as usize) < width {
            return Err(malformed(format!(
                "compound of {size} bytes cannot hold its count"
            )));
        }
        let (count, body) = body.split_at(width);
        let count = if wide {
            u32::from_be_bytes([count[0], count[1], count[2], count[3]])
        } else {
            u32::from(count[0])
        };
        // Every element takes at least one byte, so a count beyond the size is a lie that would
        // otherwise make callers iterate (or reserve) far more than the data holds.
        if count as usize > body.len() {
            return Err(malformed(format!(
                "compound claims {count} elements in {} bytes",
                body.len()
            )));
        }
        Ok((count, body))
    }

    fn text(bytes: &'a [u8], what: &str) -> Result<&'a str> {
        std::str::from_utf8(bytes).map_err(|_| malformed(format!("{what} is not valid UTF-8")))
    }

    /// Reads the descriptor after a `0x00` constructor.
    pub fn read_descriptor(&mut self) -> Result<Descriptor<'a>> {
        match self.read_value()? {
            Value::Ulong(code) => Ok(Descriptor::Code(code)),
            Value::Symbol(name) => Ok(Descriptor::Symbol(name)),
            other => Err(malformed(format!(
                "a descriptor must be a ulong or a symbol, not {other:?}"
            ))),
        }
    }

    /// Reads one value.
    pub fn read_value(&mut self) -> Result<Value<'a>> {
        let code = self.u8()?;
        self.read_value_of(code)
    }

    fn read_value_of(&mut self, code: u8) -> Result<Value<'a>> {
        use code::*;
        Ok(match code {
            DESCRIBED => {
                let descriptor = self.read_descriptor()?;
                let start = self.position;
                self.skip()?;
                Value::Described(descriptor, &self.bytes[start..self.position])
            }
            NULL => Value::Null,
            TRUE => Value::Bool(true),
            FALSE => Value::Bool(false),
            BOOLEAN => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(malformed(format!("boolean byte {other:#04x}"))),
            },
            UINT0 => Value::Uint(0),
            ULONG0 => Value::Ulong(0),
            LIST0 => Value::List(Compound {
                count: 0,
                body: &[],
            }),
            UBYTE => Value::Ubyte(self.u8()?),
            BYTE => Value::Byte(i8::from_be_bytes(self.fixed()?)),
            SMALL_UINT => Value::Uint(u32::from(self.u8()?)),
            SMALL_ULONG => Value::Ulong(u64::from(self.u8()?)),
            SMALL_INT => Value::Int(i32::from(i8::from_be_bytes(self.fixed()?))),
            SMALL_LONG => Value::Long(i64::from(i8::from_be_bytes(self.fixed()?))),
            USHORT => Value::Ushort(u16::from_be_bytes(self.fixed()?)),
            SHORT => Value::Short(i16::from_be_bytes(self.fixed()?)),
            UINT => Value::Uint(self.u32()?),
            INT => Value::Int(i32::from_be_bytes(self.fixed()?)),
            FLOAT => Value::Float(f32::from_be_bytes(self.fixed()?)),
            CHAR => {
                let point = self.u32()?;
                Value::Char(
                    char::from_u32(point)
                        .ok_or_else(|| malformed(format!("char {point:#x} is not a code point")))?,
                )
            }
            DECIMAL32 => Value::Decimal32(self.fixed()?),
            ULONG => Value::Ulong(u64::from_be_bytes(self.fixed()?)),
            LONG => Value::Long(i64::from_be_bytes(self.fixed()?)),
            DOUBLE => Value::Double(f64::from_be_bytes(self.fixed()?)),
            TIMESTAMP => Value::Timestamp(i64::from_be_bytes(self.fixed()?)),
            DECIMAL64 => Value::Decimal64(self.fixed()?),
            DECIMAL128 => Value::Decimal128(self.fixed()?),
            UUID => Value::Uuid(self.fixed()?),
            VBIN8 | VBIN32 | STR8 | STR32 | SYM8 | SYM32 => {
                let len = if code & 0xf0 == 0xa0 {
                    usize::from(self.u8()?)
                } else {
                    self.u32()? as usize
                };
                let data = self.take(len)?;
                match code {
                    VBIN8 | VBIN32 => Value::Binary(data),
                    STR8 | STR32 => Value::String(Self::text(data, "a string")?),
                    _ => Value::Symbol(Self::text(data, "a symbol")?),
                }
            }
            LIST8 | LIST32 => {
                let (count, body) = self.sized(code)?;
                Value::List(Compound { count, body })
            }
            MAP8 | MAP32 => {
                let (count, body) = self.sized(code)?;
                if count % 2 != 0 {
                    return Err(malformed(format!("a map with an odd count ({count})")));
                }
                Value::Map(Compound { count, body })
            }
            ARRAY8 | ARRAY32 => {
                let (count, body) = self.sized(code)?;
                Value::Array(ArrayView { count, body })
            }
            other => return Err(malformed(format!("unknown format code {other:#04x}"))),
        })
    }

    /// Skips one value (a described value with its descriptor) without decoding it.
    pub fn skip(&mut self) -> Result<()> {
        let code = self.u8()?;
        if code == code::DESCRIBED {
            self.skip()?;
            return self.skip();
        }
        let width = match code >> 4 {
            0x4 => 0,
            0x5 => 1,
            0x6 => 2,
            0x7 => 4,
            0x8 => 8,
            0x9 => 16,
            0xa | 0xc | 0xe => usize::from(self.u8()?),
            0xb | 0xd | 0xf => self.u32()? as usize,
            _ => return Err(malformed(format!("unknown format code {code:#04x}"))),
        };
        self.take(width).map(|_| ())
    }

    /// Reads a `symbol`'s bytes without checking them as UTF-8 (for comparing against known ASCII
    /// names), or skips any other value and returns `None`.
    pub fn read_symbol_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        let code = self.peek_code()?;
        if code != code::SYM8 && code != code::SYM32 {
            self.skip()?;
            return Ok(None);
        }
        self.position += 1;
        let len = if code == code::SYM8 {
            usize::from(self.u8()?)
        } else {
            self.u32()? as usize
        };
        self.take(len).map(Some)
    }

    /// Reads a list header (`list0`, `list8`, `list32`); `null` is an empty list.
    pub fn read_list(&mut self) -> Result<Compound<'a>> {
        match self.read_value()? {
            Value::List(list) => Ok(list),
            Value::Null => Ok(Compound {
                count: 0,
                body: &[],
            }),
            other => Err(malformed(format!("a list was expected, not {other:?}"))),
        }
    }

    /// Reads a map; `null` is an empty map.
    pub fn read_map(&mut self) -> Result<Compound<'a>> {
        match self.read_value()? {
            Value::Map(map) => Ok(map),
            Value::Null => Ok(Compound {
                count: 0,
                body: &[],
            }),
            other => Err(malformed(format!("a map was expected, not {other:?}"))),
        }
    }
}

/// The fields of a performative or section list, read in order; absent trailing fields read as null.
#[derive(Debug)]
pub struct Fields<'a> {
    reader: Reader<'a>,
    left: u32,
}

impl<'a> Fields<'a> {
    /// The fields of `list`.
    pub fn new(list: Compound<'a>) -> Self {
        Self {
            reader: list.reader(),
            left: list.count,
        }
    }

    /// The next field, or `null` past the end.
    pub fn next_value(&mut self) -> Result<Value<'a>> {
        if self.left == 0 {
            return Ok(Value::Null);
        }
        self.left -= 1;
        self.reader.read_value()
    }

    /// Skips the next field without decoding it.
    pub fn skip_next(&mut self) -> Result<()> {
        if self.left == 0 {
            return Ok(());
        }
        self.left -= 1;
        self.reader.skip()
    }

    /// The next field as an optional `uint`.
    pub fn uint(&mut self, name: &str) -> Result<Option<u32>> {
        match self.next_value()? {
            Value::Null => Ok(None),
            Value::Uint(v) => Ok(Some(v)),
            other => Err(malformed(format!("{name} must be a uint, not {other:?}"))),
        }
    }

    /// The next field as a boolean, `default` when null.
    pub fn boolean(&mut self, name: &str, default: bool) -> Result<bool> {
        match self.next_value()? {
            Value::Null => Ok(default),
            Value::Bool(v) => Ok(v),
            other => Err(malformed(format!(
                "{name} must be a boolean, not {other:?}"
            ))),
        }
    }

    /// The next field as optional binary.
    pub fn binary(&mut self, name: &str) -> Result<Option<&'a [u8]>> {
        match self.next_value()? {
            Value::Null => Ok(None),
            Value::Binary(v) => Ok(Some(v)),
            other => Err(malformed(format!("{name} must be binary, not {other:?}"))),
        }
    }

    /// The next field as an optional `ubyte`.
    pub fn ubyte(&mut self, name: &str) -> Result<Option<u8>> {
        match self.next_value()? {
            Value::Null => Ok(None),
            Value::Ubyte(v) => Ok(Some(v)),
            other => Err(malformed(format!("{name} must be a ubyte, not {other:?}"))),
        }
    }
}

/// Appends a `uint` in its smallest encoding.
pub fn put_uint(out: &mut Vec<u8>, value: u32) {
    match value {
        0 => out.push(code::UINT0),
        1..=255 => out.extend_from_slice(&[code::SMALL_UINT, value as u8]),
        _ => {
            out.push(code::UINT);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Appends a `ulong` in its smallest encoding.
pub fn put_ulong(out: &mut Vec<u8>, value: u64) {
    match value {
        0 => out.push(code::ULONG0),
        1..=255 => out.extend_from_slice(&[code::SMALL_ULONG, value as u8]),
        _ => {
            out.push(code::ULONG);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Appends a `long` in its smallest encoding.
pub fn put_long(out: &mut Vec<u8>, value: i64) {
    match i8::try_from(value) {
        Ok(small) => out.extend_from_slice(&[code::SMALL_LONG, small.to_be_bytes()[0]]),
        Err(_) => {
            out.push(code::LONG);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Appends a `boolean`.
pub fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(if value { code::TRUE } else { code::FALSE });
}

/// Appends a `timestamp`.
pub fn put_timestamp(out: &mut Vec<u8>, millis: i64) {
    out.push(code::TIMESTAMP);
    out.extend_from_slice(&millis.to_be_bytes());
}

/// Appends a `null`.
pub fn put_null(out: &mut Vec<u8>) {
    out.push(code::NULL);
}

/// Appends a `double`.
pub fn put_double(out: &mut Vec<u8>, value: f64) {
    out.push(code::DOUBLE);
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a `uuid`.
pub fn put_uuid(out: &mut Vec<u8>, value: &[u8; 16]) {
    out.push(code::UUID);
    out.extend_from_slice(value);
}

fn put_variable(out: &mut Vec<u8>, short: u8, long: u8, data: &[u8]) {
    match u8::try_from(data.len()) {
        Ok(len) => out.extend_from_slice(&[short, len]),
        Err(_) => {
            out.push(long);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(data);
}

/// Appends a `binary`.
pub fn put_binary(out: &mut Vec<u8>, data: &[u8]) {
    put_variable(out, code::VBIN8, code::VBIN32, data);
}

/// Appends a `string`.
pub fn put_string(out: &mut Vec<u8>, text: &str) {
    put_variable(out, code::STR8, code::STR32, text.as_bytes());
}

/// Appends a `symbol`.
pub fn put_symbol(out: &mut Vec<u8>, text: &str) {
    put_variable(out, code::SYM8, code::SYM32, text.as_bytes());
}

/// Appends the constructor of a described type with a numeric descriptor.
pub fn put_descriptor(out: &mut Vec<u8>, descriptor: u64) {
    out.push(code::DESCRIBED);
    put_ulong(out, descriptor);
}

/// Wraps `elements` (already encoded, `count` of them) as a list or map with the given codes.
fn put_compound(out: &mut Vec<u8>, short: u8, long: u8, count: u32, elements: &[u8]) {
    if count == 0 && short == code::LIST8 {
        out.push(code::LIST0);
        return;
    }
    match (u8::try_from(elements.len() + 1), u8::try_from(count)) {
        (Ok(size), Ok(count)) => out.extend_from_slice(&[short, size, count]),
        _ => {
            out.push(long);
            out.extend_from_slice(&(elements.len() as u32 + 4).to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
    }
    out.extend_from_slice(elements);
}

/// Appends a list of `count` already-encoded elements.
pub fn put_list(out: &mut Vec<u8>, count: u32, elements: &[u8]) {
    put_compound(out, code::LIST8, code::LIST32, count, elements);
}

/// Appends a map of `count` already-encoded keys and values (`count` counts both).
pub fn put_map(out: &mut Vec<u8>, count: u32, elements: &[u8]) {
    put_compound(out, code::MAP8, code::MAP32, count, elements);
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::primitives::{OrderedMap, Symbol, Timestamp, Uuid};
    use serde_amqp::Value as Owned;

    fn encode(value: &Owned) -> Vec<u8> {
        serde_amqp::to_vec(value).expect("serde_amqp encodes")
    }

    #[test]
    fn reads_what_serde_amqp_writes() {
        let mut map = OrderedMap::new();
        map.insert(Owned::Symbol(Symbol::from("k")), Owned::Long(-7));
        let cases: Vec<(Owned, Value<'static>)> = vec![
            (Owned::Null, Value::Null),
            (Owned::Bool(true), Value::Bool(true)),
            (Owned::Ubyte(7), Value::Ubyte(7)),
            (Owned::Ushort(700), Value::Ushort(700)),
            (Owned::Uint(0), Value::Uint(0)),
            (Owned::Uint(9), Value::Uint(9)),
            (Owned::Uint(70_000), Value::Uint(70_000)),
            (Owned::Ulong(5), Value::Ulong(5)),
            (Owned::Ulong(u64::MAX), Value::Ulong(u64::MAX)),
            (Owned::Byte(-3), Value::Byte(-3)),
            (Owned::Short(-300), Value::Short(-300)),
            (Owned::Int(-5), Value::Int(-5)),
            (Owned::Int(i32::MIN), Value::Int(i32::MIN)),
            (Owned::Long(-5), Value::Long(-5)),
            (Owned::Long(i64::MAX), Value::Long(i64::MAX)),
            (Owned::Float(1.5.into()), Value::Float(1.5)),
            (Owned::Double(2.25.into()), Value::Double(2.25)),
            (Owned::Char('é'), Value::Char('é')),
            (
                Owned::Timestamp(Timestamp::from_milliseconds(1_700_000_000_123)),
                Value::Timestamp(1_700_000_000_123),
            ),
            (Owned::Uuid(Uuid::from([7; 16])), Value::Uuid([7; 16])),
            (
                Owned::Binary(serde_bytes::ByteBuf::from(vec![1, 2])),
                Value::Binary(&[1, 2]),
            ),
            (Owned::String("héllo".into()), Value::String("héllo")),
            (Owned::Symbol(Symbol::from("sym")), Value::Symbol("sym")),
        ];
        for (owned, expected) in cases {
            let bytes = encode(&owned);
            let mut reader = Reader::new(&bytes);
            assert_eq!(reader.read_value().expect("decodes"), expected, "{owned:?}");
            assert!(reader.is_empty(), "{owned:?} left bytes");
            let mut skipper = Reader::new(&bytes);
            skipper.skip().expect("skips");
            assert!(skipper.is_empty(), "{owned:?} not skipped whole");
        }
        let bytes = encode(&Owned::Map(map));
        let Value::Map(map) = Reader::new(&bytes).read_value().expect("map") else {
            panic!("not a map");
        };
        let entries: Vec<Value<'_>> = map.iter().collect::<Result<_>>().expect("entries");
        assert_eq!(entries, vec![Value::Symbol("k"), Value::Long(-7)]);
    }

    #[test]
    fn symbol_bytes_are_read_raw_and_other_values_skipped() {
        let mut out = Vec::new();
        put_symbol(&mut out, "x-opt-offset");
        put_string(&mut out, "not a symbol");
        put_symbol(&mut out, &"s".repeat(300));
        let mut reader = Reader::new(&out);
        assert_eq!(
            reader.read_symbol_bytes().unwrap(),
            Some(&b"x-opt-offset"[..])
        );
        assert_eq!(reader.read_symbol_bytes().unwrap(), None);
        assert_eq!(
            reader.read_symbol_bytes().unwrap().map(<[u8]>::len),
            Some(300)
        );
        assert!(reader.is_empty());
    }

    #[test]
    fn long_strings_and_lists_use_the_wide_encodings() {
        let text = "x".repeat(300);
        let list = Owned::List(vec![Owned::String(text.clone()); 2]);
        let bytes = encode(&list);
        assert_eq!(bytes[0], code::LIST32);
        let Value::List(list) = Reader::new(&bytes).read_value().expect("list") else {
            panic!("not a list");
        };
        let items: Vec<Value<'_>> = list.iter().collect::<Result<_>>().expect("items");
        assert_eq!(items, vec![Value::String(&text), Value::String(&text)]);
    }

    #[test]
    fn what_the_writers_write_reads_back() {
        let mut out = Vec::new();
        for n in [0u32, 1, 255, 256, u32::MAX] {
            put_uint(&mut out, n);
        }
        for n in [0u64, 200, 1 << 40] {
            put_ulong(&mut out, n);
        }
        for n in [0i64, -128, 127, 128, i64::MIN] {
            put_long(&mut out, n);
        }
        put_string(&mut out, &"s".repeat(256));
        put_symbol(&mut out, "sym");
        put_binary(&mut out, &[9; 3]);
        put_timestamp(&mut out, -1);
        put_null(&mut out);
        put_double(&mut out, -2.5);
        put_uuid(&mut out, &[4; 16]);
        let mut reader = Reader::new(&out);
        let mut values = Vec::new();
        while !reader.is_empty() {
            values.push(reader.read_value().expect("reads"));
        }
        let long = "s".repeat(256);
        assert_eq!(
            values,
            vec![
                Value::Uint(0),
                Value::Uint(1),
                Value::Uint(255),
                Value::Uint(256),
                Value::Uint(u32::MAX),
                Value::Ulong(0),
                Value::Ulong(200),
                Value::Ulong(1 << 40),
                Value::Long(0),
                Value::Long(-128),
                Value::Long(127),
                Value::Long(128),
                Value::Long(i64::MIN),
                Value::String(&long),
                Value::Symbol("sym"),
                Value::Binary(&[9; 3]),
                Value::Timestamp(-1),
                Value::Null,
                Value::Double(-2.5),
                Value::Uuid([4; 16]),
            ]
        );
        // And serde_amqp agrees with the writers.
        let owned: Owned = serde_amqp::from_slice(&out[..1]).expect("uint0");
        assert_eq!(owned, Owned::Uint(0));
    }

    #[test]
    fn truncated_and_lying_input_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            &[],
            &[code::UINT],
            &[code::STR8, 5, b'a'],
            &[code::STR32, 0xff, 0xff, 0xff, 0xff],
            &[code::LIST8, 1, 200],
            &[code::LIST8, 0],
            &[code::MAP8, 2, 1, code::NULL],
            &[code::DESCRIBED, code::SMALL_ULONG],
            &[code::DESCRIBED, code::TRUE, code::NULL],
            &[code::STR8, 1, 0xff],
            &[code::CHAR, 0, 0x11, 0, 0],
            &[0x3f],
        ];
        for bytes in cases {
            assert!(
                Reader::new(bytes).read_value().is_err(),
                "{bytes:?} should not decode"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut reader = Reader::new(&bytes);
            while !reader.is_empty() {
                if reader.read_value().is_err() {
                    break;
                }
            }
            let _ = Reader::new(&bytes).skip();
        }
    }
}
