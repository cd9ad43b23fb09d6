//! Chat prompts: messages rendered through the model's Jinja chat template, with minijinja set up
//! the way transformers' `apply_chat_template` sets up Jinja2 (`trim_blocks`, `lstrip_blocks`, Python
//! string methods, `raise_exception`, `strftime_now`, and a `tojson` that writes what Python's
//! `json.dumps` writes).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// One chat message, as in OpenAI's and transformers' message lists.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template with the special tokens it may refer to (`bos_token`, `eos_token`).
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compile the Jinja `source`; a syntax error is an [`Error::Template`].
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| Error::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The template of a `tokenizer_config.json`: its `"chat_template"` (a string, or a list of
    /// `{name, template}` of which the one named `"default"` is taken), else a `chat_template.jinja`
    /// beside it (where transformers now saves it). `Ok(None)` when there is neither. `bos_token` and
    /// `eos_token` come from the same file (strings, `{"content": ...}` objects, or null).
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Json = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        let Json::Object(config) = config else {
            return Err(Error::format(path, "expected a JSON object"));
        };
        let source = match config.get("chat_template") {
            None | Some(Json::Null) => {
                let jinja = path.with_file_name("chat_template.jinja");
                match std::fs::read_to_string(&jinja) {
                    Ok(source) => source,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io(&jinja, e)),
                }
            }
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(list)) => named_template(list, "default").ok_or_else(|| {
                Error::format(
                    path,
                    "\"chat_template\": expected a string or a list of {name, template} with one named \"default\"",
                )
            })?,
            Some(_) => {
                return Err(Error::format(
                    path,
                    "\"chat_template\": expected a string or a list of {name, template}",
                ))
            }
        };
        let bos = special_token(&config, "bos_token").map_err(|msg| Error::format(path, msg))?;
        let eos = special_token(&config, "eos_token").map_err(|msg| Error::format(path, msg))?;
        match Self::new(&source, bos, eos) {
            Err(Error::Template(msg)) => Err(Error::Template(format!("{}: {msg}", path.display()))),
            result => result.map(Some),
        }
    }

    /// What transformers' `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`
    /// renders. The template sees `messages`, `add_generation_prompt`, `tools` and `documents`
    /// (none), and `bos_token`/`eos_token` where known.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut ctx = BTreeMap::from([
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ]);
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::Template(error_chain(&e)))
    }
}

/// Parse an OpenAI-style JSON array of `{"role": ..., "content": ...}` (`--messages FILE.json`).
pub fn load_messages(path: &Path) -> Result<Vec<Message>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_messages(&text, path)
}

/// Parse the content of a `--messages` file (see [`load_messages`]); `path` names it in errors.
pub fn parse_messages(text: &str, path: &Path) -> Result<Vec<Message>> {
    let json: Json = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    let Json::Array(entries) = json else {
        return Err(Error::format(
            path,
            "expected a JSON array of {\"role\", \"content\"} objects",
        ));
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = |name: &str| match entry.get(name) {
                Some(Json::String(s)) => Ok(s.clone()),
                _ => Err(Error::format(
                    path,
                    format!("message {i}: expected an object with a string \"{name}\""),
                )),
            };
            Ok(Message {
                role: field("role")?,
                content: field("content")?,
            })
        })
        .collect()
}

/// The `template` of the entry named `name` in a list of `{name, template}`.
fn named_template(list: &[Json], name: &str) -> Option<String> {
    list.iter()
        .find(|t| t.get("name").and_then(Json::as_str) == Some(name))
        .and_then(|t| t.get("template")?.as_str().map(str::to_owned))
}

/// A special token of tokenizer_config.json: a string, a `{"content": ...}` object, null or absent.
fn special_token(
    config: &serde_json::Map<String, Json>,
    key: &str,
) -> std::result::Result<Option<String>, String> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(o)) => match o.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("\"{key}\": expected a string \"content\"")),
        },
        Some(_) => Err(format!(
            "\"{key}\": expected a string, an object with \"content\", or null"
        )),
    }
}

/// A minijinja error followed by the errors it wraps (say, from a failing callback).
fn error_chain(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        source = cause.source();
    }
    msg
}

/// `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current time, formatted like Python's `datetime.now().strftime`.
/// UTC, as the engine carries no time-zone data.
fn strftime_now(format: &str) -> std::result::Result<String, minijinja::Error> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Format the UTC time `secs` after the Unix epoch with the C `strftime` directives templates use
/// (`%d %b %Y`, `%Y-%m-%d`, ...), glibc's `%-d` (no padding) included.
fn strftime(format: &str, secs: u64) -> std::result::Result<String, minijinja::Error> {
    let days = secs / 86_400;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, for dates after 1970).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let day_of_year = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][month as usize - 1]
        + day
        + u64::from(leap && month > 2);
    let weekday = ((days + 3) % 7) as usize; // 1970-01-01 was a Thursday; 0 = Monday.
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let pad = spec != Some('-');
        if !pad {
            spec = chars.next();
        }
        let num = |n: u64, width: usize| {
            if pad {
                format!("{n:0width$}")
            } else {
                n.to_string()
            }
        };
        let piece = match spec {
            Some('Y') => year.to_string(),
            Some('y') => num(year % 100, 2),
            Some('m') => num(month, 2),
            Some('d') => num(day, 2),
            Some('e') => format!("{day:2}"),
            Some('j') => num(day_of_year, 3),
            Some('H') => num(hour, 2),
            Some('I') => num(hour12, 2),
            Some('M') => num(minute, 2),
            Some('S') => num(second, 2),
            Some('p') => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            Some('B') => MONTHS[month as usize - 1].to_owned(),
            Some('b') | Some('h') => MONTHS[month as usize - 1][..3].to_owned(),
            Some('A') => WEEKDAYS[weekday].to_owned(),
            Some('a') => WEEKDAYS[weekday][..3].to_owned(),
            Some('F') => format!("{year}-{month:02}-{day:02}"),
            Some('T') => format!("{hour:02}:{minute:02}:{second:02}"),
            Some('%') => "%".to_owned(),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported directive %{}",
                        other.map_or(String::new(), String::from)
                    ),
                ))
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, so `", "` and `": "` separators, dict order kept, no HTML
/// escaping.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(usize::try_from(n).unwrap_or(0))),
            (None, Some(s)) => Some(s.to_owned()),
            _ => return Err(bad_arg("tojson: indent must be an integer or a string")),
        },
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(seps) => match <[String; 2]>::try_from(seps) {
            Ok([item, key]) => (item, key),
            Err(_) => return Err(bad_arg("tojson: separators must be (item, key) strings")),
        },
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    style.write(&mut out, value, 0)?;
    Ok(Value::from(out))
}

fn bad_arg(msg: &str) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, msg.to_owned())
}

/// The options of Python's `json.dumps` that `tojson` exposes.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonStyle {
    fn write(
        &self,
        out: &mut String,
        v: &Value,
        depth: usize,
    ) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&json_number(v)?),
            ValueKind::String => self.write_str(out, v.as_str().unwrap_or_default()),
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in v.try_iter()? {
                    let name = match key.as_str() {
                        Some(s) => s.to_owned(),
                        None if key.kind() == ValueKind::Number => json_number(&key)?,
                        None => {
                            let mut s = String::new();
                            self.write(&mut s, &key, 0)?;
                            s
                        }
                    };
                    entries.push((name, v.get_item(&key)?));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, ('{', '}'), &entries, depth, |out, (k, item), depth| {
                    self.write_str(out, k);
                    out.push_str(&self.key_sep);
                    self.write(out, item, depth)
                })?;
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.write_container(out, ('[', ']'), &items, depth, |out, item, depth| {
                    self.write(out, item, depth)
                })?;
            }
            kind => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a value of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    fn write_container<T>(
        &self,
        out: &mut String,
        (open, close): (char, char),
        items: &[T],
        depth: usize,
        write_item: impl Fn(&mut String, &T, usize) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if !items.is_empty() {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&self.item_sep);
                }
                self.newline(out, depth + 1);
                write_item(out, item, depth + 1)?;
            }
            self.newline(out, depth);
        }
        out.push(close);
        Ok(())
    }

    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth));
        }
    }

    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A number as Python's `json.dumps` writes it (`repr` of int and float).
fn json_number(v: &Value) -> std::result::Result<String, minijinja::Error> {
    if v.is_integer() {
        return Ok(i128::try_from(v.clone())?.to_string());
    }
    let f = f64::try_from(v.clone())?;
    Ok(if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        (if f > 0.0 { "Infinity" } else { "-Infinity" }).to_owned()
    } else {
        python_float_repr(f)
    })
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents -4..16, else
/// scientific with a signed two-digit exponent (`1e-05`, `1e+16`).
fn python_float_repr(f: f64) -> String {
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = f.to_string();
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python() {
        let fmt = "%Y-%m-%d %H:%M:%S %j %a %A %b %B %y %I %p %e|%-d %-m %-j|%F %T %%";
        let cases = [
            (0, "1970-01-01 00:00:00 001 Thu Thursday Jan January 70 12 AM  1|1 1 1|1970-01-01 00:00:00 %"),
            (1_709_251_200, "2024-03-01 00:00:00 061 Fri Friday Mar March 24 12 AM  1|1 3 61|2024-03-01 00:00:00 %"),
            (1_735_689_599, "2024-12-31 23:59:59 366 Tue Tuesday Dec December 24 11 PM 31|31 12 366|2024-12-31 23:59:59 %"),
            (951_829_262, "2000-02-29 13:01:02 060 Tue Tuesday Feb February 00 01 PM 29|29 2 60|2000-02-29 13:01:02 %"),
        ];
        for (secs, expected) in cases {
            assert_eq!(strftime(fmt, secs).unwrap(), expected, "secs = {secs}");
        }
        assert!(strftime("%Q", 0).is_err());
        assert!(strftime("%", 0).is_err());
    }

    #[test]
    fn python_float_repr_cases() {
        let cases = [
            (1.5, "1.5"),
            (2.0, "2.0"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (123456789.0, "123456789.0"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
        ];
        for (f, expected) in cases {
            assert_eq!(python_float_repr(f), expected);
        }
    }
}
