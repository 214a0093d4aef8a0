//! Decisions and their interpretation (`authority-and-policy.md` §5.4, §5.5, §5.6).

use std::error::Error;
use std::time::Duration;

use regorus::LimitError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `decision`: allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    /// The request may proceed (an allow carrying `step_up_required` is a hold).
    Allow,
    /// The request is denied; the reason is in the diagnostics.
    Deny,
}

/// An interpreted result document.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Allow or deny.
    pub decision: DecisionKind,
    /// `complete`, or anything else, which callers answer with 403 `policy_eval_failed`.
    pub evaluation_status: String,
    /// The names from `determining_policies[].policy`, for example `caracal-crm-mint`.
    pub determining_policies: Vec<String>,
    /// The diagnostics objects, in order.
    pub diagnostics: Vec<Value>,
}

/// Who approves a held mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approver {
    /// An operator with the approve capability (the default).
    #[default]
    Operator,
    /// The subject of the request.
    Subject,
    /// Either.
    Any,
}

/// How the approver sees the requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Identified (the default).
    #[default]
    Identified,
    /// Pseudonymous.
    Pseudonymous,
    /// Anonymous.
    Anonymous,
}

/// One `approval_tiers` entry named by a `step_up_required` diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierDeclaration {
    /// The tier name.
    pub tier: String,
    /// Who approves; `operator` when not declared.
    pub approver: Approver,
    /// How the approver sees the requester; `identified` when not declared.
    pub privacy: Privacy,
    /// The declared approval lifetime, when declared as a positive integer.
    pub ttl_seconds: Option<u64>,
}

/// Why a decision could not be made. Every variant is an engine error: callers answer 503
/// `policy_eval_failed`, never an allow.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The evaluation ran past its time limit.
    #[error("policy evaluation exceeded its time limit of {limit:?}")]
    TimedOut {
        /// The configured limit.
        limit: Duration,
    },
    /// regorus failed to load, prepare or evaluate.
    #[error("policy engine error: {source}")]
    Engine {
        /// regorus's error.
        #[source]
        source: Box<dyn Error + Send + Sync + 'static>,
    },
    /// The result document has the wrong shape (§5.5).
    #[error("policy result has the wrong shape: {detail}")]
    BadResultShape {
        /// What was wrong.
        detail: String,
    },
    /// The input or data could not be converted for the engine.
    #[error("policy input could not be converted: {source}")]
    Input {
        /// The conversion error.
        #[source]
        source: serde_json::Error,
    },
    /// The start-up self check did not get the default deny.
    #[error("policy self check failed: the contract answered {got}")]
    SelfCheckFailed {
        /// The result document the contract gave.
        got: String,
    },
}

/// Classifies a regorus error: a time-limit error anywhere in the chain is [`EvalError::TimedOut`].
pub(crate) fn engine_error<E>(err: E) -> EvalError
where
    E: AsRef<dyn Error + Send + Sync + 'static> + Into<Box<dyn Error + Send + Sync + 'static>>,
{
    let mut current: Option<&(dyn Error + 'static)> = Some(err.as_ref());
    while let Some(cause) = current {
        if let Some(LimitError::TimeLimitExceeded { limit, .. }) =
            cause.downcast_ref::<LimitError>()
        {
            return EvalError::TimedOut { limit: *limit };
        }
        // Some regorus paths re-wrap the limit error as text.
        if let Some(limit) = time_limit_in_message(&cause.to_string()) {
            return EvalError::TimedOut { limit };
        }
        current = cause.source();
    }
    EvalError::Engine { source: err.into() }
}

/// The limit of a `execution exceeded time limit (elapsed=…ns, limit=…ns)` message.
fn time_limit_in_message(message: &str) -> Option<Duration> {
    const MARKER: &str = "execution exceeded time limit";
    let rest = message.get(message.find(MARKER)? + MARKER.len()..)?;
    let digits = rest.get(rest.find("limit=")? + "limit=".len()..)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let nanos = digits.get(..end)?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn shape_error(detail: impl Into<String>) -> EvalError {
    EvalError::BadResultShape {
        detail: detail.into(),
    }
}

impl Decision {
    /// A complete deny with one `{"reason": …}` diagnostic.
    pub fn deny(reason: &str) -> Self {
        let mut diagnostic = Map::new();
        diagnostic.insert("reason".to_owned(), Value::String(reason.to_owned()));
        Self {
            decision: DecisionKind::Deny,
            evaluation_status: "complete".to_owned(),
            determining_policies: Vec::new(),
            diagnostics: vec![Value::Object(diagnostic)],
        }
    }

    /// Interprets a regorus result (§5.5): undefined or `{}` is the default deny.
    ///
    /// A result document of the shape the contract produces is read directly, converting only
    /// the diagnostics to JSON; anything else (and every malformed result) goes through its JSON
    /// form and [`Self::from_result_document`]. Both give the same decision for the same
    /// document (`tests::reading_a_result_directly_equals_reading_its_json`).
    pub(crate) fn from_result(result: &regorus::Value) -> Result<Self, EvalError> {
        if *result == regorus::Value::Undefined {
            return Ok(Self::deny("no_rule_matched"));
        }
        if let Some(decision) = Self::from_plain_result(result) {
            return Ok(decision);
        }
        let json = serde_json::to_value(result)
            .map_err(|err| shape_error(format!("result is not JSON: {err}")))?;
        Self::from_result_document(&json)
    }

    /// The fast path of [`Self::from_result`]: an object with exactly the four result fields, a
    /// string `decision` of `allow` or `deny`, a string `evaluation_status`, and arrays of
    /// objects with string keys for `determining_policies` and `diagnostics`. `None` for
    /// anything else.
    fn from_plain_result(result: &regorus::Value) -> Option<Self> {
        let object = result.as_object().ok()?;
        if object.len() != 4 {
            return None;
        }
        let field = |name: &str| object.get(&regorus::Value::from(name));
        let decision = match field("decision")? {
            regorus::Value::String(text) if text.as_ref() == "allow" => DecisionKind::Allow,
            regorus::Value::String(text) if text.as_ref() == "deny" => DecisionKind::Deny,
            _ => return None,
        };
        let regorus::Value::String(evaluation_status) = field("evaluation_status")? else {
            return None;
        };
        let policies = plain_objects(field("determining_policies")?)?;
        let diagnostics = plain_objects(field("diagnostics")?)?;
        let determining_policies = policies
            .iter()
            .filter_map(|policy| match policy.get(&regorus::Value::from("policy")) {
                Some(regorus::Value::String(name)) => Some(name.as_ref().to_owned()),
                _ => None,
            })
            .collect();
        let diagnostics = diagnostics
            .iter()
            .map(|diagnostic| serde_json::to_value(diagnostic).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            decision,
            evaluation_status: evaluation_status.as_ref().to_owned(),
            determining_policies,
            diagnostics,
        })
    }

    /// Interprets a result document (§5.5).
    ///
    /// `null` (undefined) and `{}` count as deny/complete `no_rule_matched`. Otherwise
    /// `decision` must be `allow` or `deny`, `evaluation_status` a string, and
    /// `determining_policies` and `diagnostics` arrays of objects; anything else is
    /// [`EvalError::BadResultShape`].
    pub fn from_result_document(document: &Value) -> Result<Self, EvalError> {
        let object = match document {
            Value::Null => return Ok(Self::deny("no_rule_matched")),
            Value::Object(object) if object.is_empty() => {
                return Ok(Self::deny("no_rule_matched"));
            }
            Value::Object(object) => object,
            other => return Err(shape_error(format!("result is not an object: {other}"))),
        };
        let decision = match object.get("decision").and_then(Value::as_str) {
            Some("allow") => DecisionKind::Allow,
            Some("deny") => DecisionKind::Deny,
            _ => return Err(shape_error("decision must be \"allow\" or \"deny\"")),
        };
        let evaluation_status = object
            .get("evaluation_status")
            .and_then(Value::as_str)
            .ok_or_else(|| shape_error("evaluation_status must be a string"))?
            .to_owned();
        let policies = array_of_objects(object, "determining_policies")?;
        let diagnostics = array_of_objects(object, "diagnostics")?;
        let determining_policies = policies
            .iter()
            .filter_map(|policy| policy.get("policy").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        Ok(Self {
            decision,
            evaluation_status,
            determining_policies,
            diagnostics: diagnostics.to_vec(),
        })
    }

    /// Whether the decision is an allow.
    pub fn is_allow(&self) -> bool {
        self.decision == DecisionKind::Allow
    }

    /// Whether `evaluation_status` is `complete`.
    pub fn is_complete(&self) -> bool {
        self.evaluation_status == "complete"
    }

    /// The first non-empty `diagnostics[].reason`.
    pub fn deny_reason(&self) -> Option<&str> {
        self.diagnostics
            .iter()
            .filter_map(|diagnostic| diagnostic.get("reason").and_then(Value::as_str))
            .find(|reason| !reason.is_empty())
    }

    /// The tier declarations of every `step_up_required` entry of type `human_approval`.
    /// Entries without a non-empty `tier` are ignored; an undeclared or unreadable
    /// `approver` or `privacy` takes its default, and a `ttl_seconds` that is not a positive
    /// integer is `None`.
    pub fn approval_tiers(&self) -> Vec<TierDeclaration> {
        self.diagnostics
            .iter()
            .filter_map(|diagnostic| diagnostic.get("step_up_required"))
            .filter(|step_up| step_up.get("type").and_then(Value::as_str) == Some("human_approval"))
            .filter_map(|step_up| step_up.get("tiers").and_then(Value::as_array))
            .flatten()
            .filter_map(tier_declaration)
            .collect()
    }

    /// Whether the decision is an allow that must wait for a human approval (a hold).
    pub fn requires_step_up(&self) -> bool {
        self.is_allow() && !self.approval_tiers().is_empty()
    }

    /// The decision as a result document, for audit and simulation.
    pub fn to_result_document(&self) -> Value {
        let policies = self
            .determining_policies
            .iter()
            .map(|name| {
                let mut policy = Map::new();
                policy.insert("policy".to_owned(), Value::String(name.clone()));
                Value::Object(policy)
            })
            .collect();
        let decision = match self.decision {
            DecisionKind::Allow => "allow",
            DecisionKind::Deny => "deny",
        };
        let mut document = Map::new();
        document.insert("decision".to_owned(), Value::String(decision.to_owned()));
        document.insert(
            "evaluation_status".to_owned(),
            Value::String(self.evaluation_status.clone()),
        );
        document.insert("determining_policies".to_owned(), Value::Array(policies));
        document.insert(
            "diagnostics".to_owned(),
            Value::Array(self.diagnostics.clone()),
        );
        Value::Object(document)
    }
}

/// The elements of a regorus array whose elements are all objects with string keys.
fn plain_objects(value: &regorus::Value) -> Option<Vec<&regorus::value::Object>> {
    let regorus::Value::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .map(|item| match item {
            regorus::Value::Object(object)
                if object
                    .keys()
                    .all(|key| matches!(key, regorus::Value::String(_))) =>
            {
                Some(object.as_ref())
            }
            _ => None,
        })
        .collect()
}

fn array_of_objects<'a>(
    object: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a [Value], EvalError> {
    let items = object
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| shape_error(format!("{key} must be an array")))?;
    if items.iter().all(Value::is_object) {
        Ok(items)
    } else {
        Err(shape_error(format!("{key} must hold only objects")))
    }
}

fn tier_declaration(entry: &Value) -> Option<TierDeclaration> {
    let tier = entry
        .get("tier")
        .and_then(Value::as_str)
        .filter(|tier| !tier.is_empty())?;
    let approver = match entry.get("approver").and_then(Value::as_str) {
        Some("subject") => Approver::Subject,
        Some("any") => Approver::Any,
        _ => Approver::Operator,
    };
    let privacy = match entry.get("privacy").and_then(Value::as_str) {
        Some("pseudonymous") => Privacy::Pseudonymous,
        Some("anonymous") => Privacy::Anonymous,
        _ => Privacy::Identified,
    };
    Some(TierDeclaration {
        tier: tier.to_owned(),
        approver,
        privacy,
        ttl_seconds: entry.get("ttl_seconds").and_then(positive_integer),
    })
}

/// A JSON number that is a positive integer (`60` or `60.0`).
fn positive_integer(value: &Value) -> Option<u64> {
    if let Some(integer) = value.as_u64() {
        return (integer > 0).then_some(integer);
    }
    let float = value.as_f64()?;
    let in_range = (1.0..=9_007_199_254_740_992.0).contains(&float) && float.fract() == 0.0;
    // The range check above makes the conversion exact.
    in_range.then_some(float as u64)
}

#[cfg(test)]
mod tests;
