//! A small, bounded element tree read with quick-xml: plain elements, attributes and text only
//! (docs/tsp-wire.md §4.1).

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::*;
use crate::types::MAX_MESSAGE;

/// One element of a parsed document. Text is kept verbatim (gogoc does not trim it).
#[derive(Debug)]
pub(super) struct Element {
    pub(super) name: String,
    pub(super) attrs: Vec<(String, String)>,
    pub(super) text: String,
    pub(super) children: Vec<Element>,
}

impl Element {
    pub(super) fn new(start: &BytesStart<'_>) -> Result<Self, XmlError> {
        let mut attrs = Vec::new();
        // Checks on: duplicate or unquoted attributes are malformed.
        for attr in start.attributes() {
            let attr = attr.map_err(|e| XmlError::Malformed {
                position: 0,
                reason: e.to_string(),
            })?;
            // Values are raw; a reference would need expanding, which TSP never uses.
            if attr.value.contains('&') {
                return Err(XmlError::Forbidden("entity or character references"));
            }
            attrs.push((attr.key.as_ref().to_owned(), attr.value.into_owned()));
        }
        Ok(Element {
            name: start.name().as_ref().to_owned(),
            attrs,
            text: String::new(),
            children: Vec::new(),
        })
    }

    pub(super) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(super) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// `<address>` children whose `type` is `family` (case-insensitive), in order.
    pub(super) fn addresses<'a>(&'a self, family: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children
            .iter()
            .filter(move |c| c.name == "address" && c.attr("type").is_some_and(|t| t.eq_ignore_ascii_case(family)))
    }

    /// The text of a leaf element.
    pub(super) fn text(&self, label: &'static str) -> Result<&str, XmlError> {
        if self.children.is_empty() {
            Ok(&self.text)
        } else {
            Err(XmlError::NotText(label))
        }
    }
}

pub(super) fn is_blank(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Parses a whole document into its root element, which must be `<tunnel>`. Work is bounded
/// by the size, depth and element limits before anything is interpreted.
pub(super) fn parse_document(input: &[u8]) -> Result<Element, XmlError> {
    if input.len() > MAX_MESSAGE {
        return Err(XmlError::TooLarge {
            len: input.len(),
            max: MAX_MESSAGE,
        });
    }
    let text = std::str::from_utf8(input).map_err(|_| XmlError::NotUtf8)?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;

    loop {
        let event = reader.read_event().map_err(|e| XmlError::Malformed {
            position: reader.error_position(),
            reason: e.to_string(),
        })?;
        let (start, empty) = match event {
            Event::Start(s) => (s, false),
            Event::Empty(s) => (s, true),
            Event::End(_) => {
                // quick-xml has already matched the end name against the open element.
                let Some(done) = stack.pop() else {
                    return Err(XmlError::Malformed {
                        position: reader.buffer_position(),
                        reason: "closing tag without an open element".into(),
                    });
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
                continue;
            }
            Event::Text(t) => {
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&t),
                    None if is_blank(&t) => {}
                    None => return Err(XmlError::StrayText(t.into_inner().into_owned())),
                }
                continue;
            }
            Event::Eof => break,
            Event::CData(_) => return Err(XmlError::Forbidden("CDATA sections")),
            Event::Comment(_) => return Err(XmlError::Forbidden("comments")),
            Event::Decl(_) => return Err(XmlError::Forbidden("an XML declaration")),
            Event::PI(_) => return Err(XmlError::Forbidden("processing instructions")),
            Event::DocType(_) => return Err(XmlError::Forbidden("a DOCTYPE")),
            Event::GeneralRef(_) => {
                return Err(XmlError::Forbidden("entity or character references"));
            }
        };
        elements += 1;
        if elements > MAX_ELEMENTS {
            return Err(XmlError::TooManyElements { max: MAX_ELEMENTS });
        }
        if stack.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep { max: MAX_DEPTH });
        }
        let element = Element::new(&start).map_err(|e| match e {
            XmlError::Malformed { reason, .. } => XmlError::Malformed {
                position: reader.buffer_position(),
                reason,
            },
            other => other,
        })?;
        if stack.is_empty() {
            if root.is_some() {
                return Err(XmlError::ExtraRoot(element.name));
            }
            if element.name != "tunnel" {
                return Err(XmlError::WrongRoot(element.name));
            }
        }
        if !empty {
            stack.push(element);
        } else if let Some(parent) = stack.last_mut() {
            parent.children.push(element);
        } else {
            root = Some(element);
        }
    }
    if let Some(open) = stack.pop() {
        return Err(XmlError::Unclosed(open.name));
    }
    root.ok_or(XmlError::NoRoot)
}
