//! A parser for the AML terms the DSDT builder emits (Scope, Device, Name with integer,
//! string, buffer and package data): it checks every PkgLength against its parent and
//! collects each named object by its full path.

use std::collections::BTreeMap;

/// A named object's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Integer(u64),
    String(String),
    Buffer(Vec<u8>),
    Package(Vec<Value>),
}

/// Every named object in `aml` (a table body), by full path (`\_SB_.COM1._HID`).
/// Panics on anything malformed, or on a term outside the subset.
pub fn walk(aml: &[u8]) -> BTreeMap<String, Value> {
    let mut names = BTreeMap::new();
    terms(aml, "\\", &mut names);
    names
}

/// The descriptors of a resource template, without its end tag, which must close it
/// exactly with a zero checksum byte.
pub fn resources(template: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        let tag = template[pos];
        let len = if tag & 0x80 == 0 {
            1 + usize::from(tag & 7)
        } else {
            3 + usize::from(u16::from_le_bytes([template[pos + 1], template[pos + 2]]))
        };
        assert!(pos + len <= template.len(), "descriptor {tag:#x} overruns");
        if tag == 0x79 {
            assert_eq!(pos + len, template.len(), "end tag closes the template");
            return items;
        }
        items.push(&template[pos..pos + len]);
        pos += len;
    }
}

/// An Extended Interrupt descriptor of one interrupt, `flags` as ACPI encodes them.
pub fn extended_irq(gsi: u32, flags: u8) -> Vec<u8> {
    let mut descriptor = vec![0x89, 6, 0, flags, 1];
    descriptor.extend(gsi.to_le_bytes());
    descriptor
}

fn terms(aml: &[u8], scope: &str, names: &mut BTreeMap<String, Value>) {
    let mut parser = Parser { aml, pos: 0 };
    while parser.pos < aml.len() {
        match parser.byte() {
            0x10 => parser.named_scope(scope, names),
            0x5b => {
                assert_eq!(parser.byte(), 0x82, "only Device among extended opcodes");
                parser.named_scope(scope, names);
            }
            0x08 => {
                let path = join(scope, &parser.name_string());
                let value = parser.data();
                assert!(names.insert(path.clone(), value).is_none(), "{path} twice");
            }
            op => panic!("opcode {op:#x} at {} under {scope}", parser.pos - 1),
        }
    }
}

fn join(scope: &str, name: &str) -> String {
    match (name.starts_with('\\'), scope) {
        (true, _) => name.to_string(),
        (false, "\\") => format!("\\{name}"),
        (false, _) => format!("{scope}.{name}"),
    }
}

struct Parser<'a> {
    aml: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn byte(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        assert!(self.pos + len <= self.aml.len(), "{len} bytes past the end");
        let bytes = &self.aml[self.pos..self.pos + len];
        self.pos += len;
        bytes
    }

    /// A PkgLength and what it covers (it counts its own bytes).
    fn package(&mut self) -> &'a [u8] {
        let start = self.pos;
        let lead = self.byte();
        let follow = usize::from(lead >> 6);
        let mut len = usize::from(if follow == 0 {
            lead & 0x3f
        } else {
            lead & 0x0f
        });
        for i in 0..follow {
            len |= usize::from(self.byte()) << (4 + 8 * i);
        }
        assert!(len >= self.pos - start, "PkgLength shorter than itself");
        self.take(len - (self.pos - start))
    }

    /// A Scope or Device body: its name, then terms.
    fn named_scope(&mut self, scope: &str, names: &mut BTreeMap<String, Value>) {
        let mut body = Parser {
            aml: self.package(),
            pos: 0,
        };
        let path = join(scope, &body.name_string());
        terms(&body.aml[body.pos..], &path, names);
    }

    fn name_string(&mut self) -> String {
        let mut path = String::new();
        if self.aml[self.pos] == b'\\' {
            path.push(char::from(self.byte()));
        }
        let segments = match self.aml[self.pos] {
            0x2e => {
                self.byte();
                2
            }
            0x2f => {
                self.byte();
                usize::from(self.byte())
            }
            _ => 1,
        };
        let names: Vec<String> = (0..segments)
            .map(|_| {
                let segment = self.take(4);
                assert!(segment
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_'));
                String::from_utf8(segment.to_vec()).unwrap()
            })
            .collect();
        path + &names.join(".")
    }

    fn data(&mut self) -> Value {
        match self.byte() {
            0x00 => Value::Integer(0),
            0x01 => Value::Integer(1),
            0xff => Value::Integer(u64::MAX),
            0x0a => Value::Integer(self.le(1)),
            0x0b => Value::Integer(self.le(2)),
            0x0c => Value::Integer(self.le(4)),
            0x0e => Value::Integer(self.le(8)),
            0x0d => {
                let len = self.aml[self.pos..].iter().position(|c| *c == 0).unwrap();
                let text = self.take(len);
                self.byte();
                Value::String(String::from_utf8(text.to_vec()).unwrap())
            }
            0x11 => self.buffer(),
            0x12 => self.elements(),
            op => panic!("data opcode {op:#x} at {}", self.pos - 1),
        }
    }

    fn le(&mut self, len: usize) -> u64 {
        let bytes = self.take(len);
        bytes
            .iter()
            .rev()
            .fold(0, |value, byte| value << 8 | u64::from(*byte))
    }

    /// A Buffer: its size as an integer, then exactly that many bytes.
    fn buffer(&mut self) -> Value {
        let mut body = Parser {
            aml: self.package(),
            pos: 0,
        };
        let Value::Integer(size) = body.data() else {
            panic!("buffer size is not an integer");
        };
        let data = &body.aml[body.pos..];
        assert_eq!(data.len() as u64, size, "buffer size");
        Value::Buffer(data.to_vec())
    }

    /// A Package: its element count, then exactly that many elements.
    fn elements(&mut self) -> Value {
        let mut body = Parser {
            aml: self.package(),
            pos: 0,
        };
        let count = usize::from(body.byte());
        let mut elements = Vec::new();
        while body.pos < body.aml.len() {
            elements.push(body.data());
        }
        assert_eq!(elements.len(), count, "package element count");
        Value::Package(elements)
    }
}
