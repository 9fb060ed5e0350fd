//! `--set NODE.INPUT=VALUE`: parses one override into the API's typed
//! `InputValue`, keeping 64-bit integers exact. Only parsing lives here.

use std::collections::HashMap;

use crate::pb::{InputValue, NodeOverrides, input_value::Kind};

/// One parsed `--set`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The node id.
    pub node: String,
    /// The input name.
    pub input: String,
    /// The value.
    pub value: Kind,
}

/// Parses `NODE.INPUT=VALUE`. VALUE is a JSON literal (a number, a quoted
/// string, true or false); anything that is not JSON is taken as text.
pub fn parse(text: &str) -> Result<Override, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NODE.INPUT=VALUE"))?;
    let (node, input) = key
        .split_once('.')
        .filter(|(node, input)| !node.is_empty() && !input.is_empty())
        .ok_or_else(|| format!("{key:?} is not NODE.INPUT"))?;
    Ok(Override {
        node: node.to_owned(),
        input: input.to_owned(),
        value: value_of(value)?,
    })
}

fn value_of(text: &str) -> Result<Kind, String> {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        return Ok(Kind::StringValue(text.to_owned()));
    };
    match json {
        serde_json::Value::Bool(b) => Ok(Kind::BoolValue(b)),
        serde_json::Value::String(s) => Ok(Kind::StringValue(s)),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Kind::IntValue(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Kind::UintValue(u))
            } else if text
                .trim_start()
                .trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                Err(format!("{text} does not fit in 64 bits"))
            } else {
                match n.as_f64().filter(|f| f.is_finite()) {
                    Some(f) => Ok(Kind::DoubleValue(f)),
                    None => Err(format!("{text} is not a finite number")),
                }
            }
        }
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            Err(format!(
                "{text} is not a literal (a number, a string, true or false)"
            ))
        }
    }
}

/// The overrides as the API's map, by node id.
pub fn to_map(overrides: &[Override]) -> HashMap<String, NodeOverrides> {
    let mut map: HashMap<String, NodeOverrides> = HashMap::new();
    for o in overrides {
        map.entry(o.node.clone()).or_default().inputs.insert(
            o.input.clone(),
            InputValue {
                kind: Some(o.value.clone()),
            },
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Kind {
        parse(&format!("3.seed={text}")).expect("parses").value
    }

    #[test]
    fn numbers_keep_their_exact_type() {
        assert_eq!(value("18446744073709551615"), Kind::UintValue(u64::MAX));
        assert_eq!(value("42"), Kind::IntValue(42));
        assert_eq!(value("-7"), Kind::IntValue(-7));
        assert_eq!(value("0.5"), Kind::DoubleValue(0.5));
        assert_eq!(value("1e3"), Kind::DoubleValue(1000.0));
        assert!(parse("3.seed=18446744073709551616").is_err());
    }

    #[test]
    fn text_and_booleans() {
        assert_eq!(value("\"a cat\""), Kind::StringValue("a cat".into()));
        assert_eq!(value("a cat"), Kind::StringValue("a cat".into()));
        assert_eq!(value("true"), Kind::BoolValue(true));
        assert_eq!(value("false"), Kind::BoolValue(false));
        assert!(parse("3.seed=null").is_err());
        assert!(parse("3.seed=[1]").is_err());
    }

    #[test]
    fn the_key_is_split_at_the_first_dot_and_equals() {
        let o = parse("12.text=a=b.c").expect("parses");
        assert_eq!((o.node.as_str(), o.input.as_str()), ("12", "text"));
        assert_eq!(o.value, Kind::StringValue("a=b.c".into()));
        assert!(parse("seed=1").is_err());
        assert!(parse("3.seed").is_err());
        assert!(parse(".seed=1").is_err());
    }

    #[test]
    fn overrides_are_grouped_by_node() {
        let map = to_map(&[
            parse("3.seed=1").expect("parses"),
            parse("3.steps=2").expect("parses"),
        ]);
        assert_eq!(map["3"].inputs.len(), 2);
    }
}
