//! Adopter-document validation (`authority-and-policy.md` §5.1).
//!
//! An adopter document is pure data: a Rego v1 module in `package caracal.authz`, marked with
//! `# caracal:data-document`, that defines only the six data roots. Validation runs in this
//! order, and the first failure is the answer:
//!
//! 1. size: `empty_policy`, `content_too_large`;
//! 2. a lexical scan: `unterminated_string`, `unbalanced_delimiters`;
//! 3. the package line: `missing_package_declaration`, `invalid_package_name`;
//! 4. regorus's parser: `rego_parse_error:<line>:<col>`;
//! 5. the module: `must_use_package_caracal_authz`, `must_be_data_document`,
//!    `data_document_must_not_define_result`, `data_document_must_define_data`,
//!    `data_document_rule_not_allowed:<name>`;
//! 6. an AST walk: `forbidden_builtin:<name>`, `input_reference_not_allowed`,
//!    `data_reference_not_allowed:<path>`, `with_not_allowed` (first of each kind, in that
//!    order of precedence);
//! 7. `unsupported_schema_version:<v>`.

use std::num::{NonZeroU32, NonZeroUsize};

use regorus::Value;
use regorus::unstable::{
    Expr, Literal, LiteralStmt, Module, Parser, Query, Rule, RuleHead, Source,
};

use crate::input::SCHEMA_VERSION;

/// Largest accepted document, in characters.
pub const MAX_DOCUMENT_CHARS: usize = 262_144;

/// The line that marks a module as a data document.
pub const DATA_DOCUMENT_MARKER: &str = "# caracal:data-document";

/// The six data roots an adopter document may define and reference.
pub const DATA_ROOTS: [&str; 6] = [
    "app_ids",
    "grants",
    "confinement",
    "restrict",
    "risk",
    "approval_tiers",
];

/// Built-ins an adopter document may not call.
pub const BANNED_BUILTINS: [&str; 10] = [
    "http.send",
    "net.lookup_ip_addr",
    "net.cidr_contains",
    "net.cidr_intersects",
    "net.cidr_expand",
    "net.cidr_merge",
    "opa.runtime",
    "rand.intn",
    "time.now_ns",
    "uuid.rfc4122",
];

/// The file name regorus reports parse positions against.
const SOURCE_NAME: &str = "policy.rego";

/// Parser limits wide enough for any document within [`MAX_DOCUMENT_CHARS`].
pub(crate) const MAX_DOCUMENT_BYTES: NonZeroUsize = nonzero_usize(MAX_DOCUMENT_CHARS * 4);
pub(crate) const MAX_DOCUMENT_LINES: NonZeroUsize = nonzero_usize(MAX_DOCUMENT_CHARS + 1);
pub(crate) const MAX_DOCUMENT_COLUMN: NonZeroU32 = match NonZeroU32::new(262_145) {
    Some(column) => column,
    None => NonZeroU32::MIN,
};

const fn nonzero_usize(value: usize) -> NonZeroUsize {
    match NonZeroUsize::new(value) {
        Some(value) => value,
        None => NonZeroUsize::MIN,
    }
}

/// Why an adopter document was rejected. [`ValidationError::code`] is the §5.1
/// `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The content is empty or only whitespace.
    #[error("empty_policy")]
    EmptyPolicy,
    /// The content has more than [`MAX_DOCUMENT_CHARS`] characters.
    #[error("content_too_large")]
    ContentTooLarge,
    /// A string literal is not closed.
    #[error("unterminated_string")]
    UnterminatedString,
    /// Brackets, braces or parentheses do not pair up.
    #[error("unbalanced_delimiters")]
    UnbalancedDelimiters,
    /// The module does not start with a `package` line.
    #[error("missing_package_declaration")]
    MissingPackageDeclaration,
    /// The package name is not a dotted path of identifiers.
    #[error("invalid_package_name")]
    InvalidPackageName,
    /// regorus's parser rejected the module.
    #[error("rego_parse_error:{line}:{col}")]
    ParseError {
        /// 1-based line of the error (0 when regorus gave no position).
        line: u32,
        /// 1-based column of the error (0 when regorus gave no position).
        col: u32,
        /// regorus's message, for logs; never part of the code.
        message: String,
    },
    /// The package is not `caracal.authz`.
    #[error("must_use_package_caracal_authz")]
    WrongPackage,
    /// The `# caracal:data-document` line is missing.
    #[error("must_be_data_document")]
    NotDataDocument,
    /// The module defines `result`, which only the contract may define.
    #[error("data_document_must_not_define_result")]
    DefinesResult,
    /// The module defines no rule at all.
    #[error("data_document_must_define_data")]
    DefinesNoData,
    /// The module defines a rule (or function) other than the six roots.
    #[error("data_document_rule_not_allowed:{name}")]
    RuleNotAllowed {
        /// The rule's name.
        name: String,
    },
    /// The module calls a banned built-in.
    #[error("forbidden_builtin:{name}")]
    ForbiddenBuiltin {
        /// The built-in's dotted name.
        name: String,
    },
    /// The module reads `input`.
    #[error("input_reference_not_allowed")]
    InputReference,
    /// The module reads `data` outside `data.caracal.authz.<root>`.
    #[error("data_reference_not_allowed:{path}")]
    DataReference {
        /// The static part of the offending reference, for example `data.other.x`.
        path: String,
    },
    /// The module uses `with`.
    #[error("with_not_allowed")]
    WithNotAllowed,
    /// The document's `schema_version` is not [`SCHEMA_VERSION`].
    #[error("unsupported_schema_version:{version}")]
    UnsupportedSchemaVersion {
        /// The rejected version.
        version: String,
    },
}

impl ValidationError {
    /// The §5.1 error description, for example `rego_parse_error:3:7`.
    pub fn code(&self) -> String {
        self.to_string()
    }
}

/// Validates one adopter document and its declared `schema_version` (§5.1).
pub fn validate_document(content: &str, schema_version: &str) -> Result<(), ValidationError> {
    if content.trim().is_empty() {
        return Err(ValidationError::EmptyPolicy);
    }
    if content.chars().count() > MAX_DOCUMENT_CHARS {
        return Err(ValidationError::ContentTooLarge);
    }
    scan_strings_and_delimiters(content)?;
    check_package_line(content)?;
    let module = parse_module(content)?;
    check_module(&module, content)?;
    ReferenceWalk::run(&module)?;
    if schema_version != SCHEMA_VERSION {
        return Err(ValidationError::UnsupportedSchemaVersion {
            version: schema_version.to_owned(),
        });
    }
    Ok(())
}

/// Deepest operator nesting a document may have (see [`scan_strings_and_delimiters`]).
const MAX_EXPRESSION_DEPTH: usize = 128;

/// One bracket level of the lexical scan.
#[derive(Default)]
struct Level {
    /// The opening delimiter (`\0` for the top level).
    open: char,
    /// Depth cost of the current expression at this level: operators and accessors since the
    /// last separator, plus the cost of the bracket groups closed inside it.
    cost: usize,
    /// The highest `cost` any expression at this level reached.
    max_cost: usize,
}

/// Finds unterminated strings and unbalanced delimiters outside strings and comments, and
/// bounds how deeply operators nest.
///
/// regorus's parser builds operator chains (`a + b + …`, `a.b.c…`, `a[0][0]…`, `x in y in …`)
/// into left-leaning trees, and the parser's checks, `Drop` and the interpreter walk those
/// trees recursively, so a long enough chain overflows the thread's stack and aborts the
/// process. The scan therefore estimates each expression's depth from its tokens (separators
/// `,` `;` `:` and a newline not bridged by an operator start a new expression) and rejects a
/// document past [`MAX_EXPRESSION_DEPTH`] as `rego_parse_error:<line>:<col>` before regorus
/// sees it.
fn scan_strings_and_delimiters(content: &str) -> Result<(), ValidationError> {
    let mut levels: Vec<Level> = vec![Level::default()];
    let mut chars = content.chars().peekable();
    let (mut line, mut col) = (1_u32, 0_u32);
    // Whether the last significant token was an operator (a newline after it continues).
    let mut after_operator = false;
    // Whether a newline ended the previous expression unless the next token is an operator.
    let mut newline_pending = false;
    // Whether the last significant token ends an operand (so `[` or `(` is an accessor).
    let mut after_operand = false;
    while let Some(ch) = chars.next() {
        col = col.saturating_add(1);
        if ch == '\n' {
            line = line.saturating_add(1);
            col = 0;
            newline_pending = !after_operator;
            continue;
        }
        if ch.is_whitespace() {
            continue;
        }
        if ch == '#' {
            while chars.next_if(|next| *next != '\n').is_some() {}
            continue;
        }
        let is_operator_char = "+-*/%&|<>=!.".contains(ch);
        if newline_pending
            && !is_operator_char
            && let Some(level) = levels.last_mut()
        {
            level.cost = 0;
        }
        newline_pending = false;
        let mut operators = 0_usize;
        match ch {
            '"' => {
                loop {
                    match chars.next() {
                        None | Some('\n') => return Err(ValidationError::UnterminatedString),
                        Some('"') => break,
                        Some('\\') => {
                            if matches!(chars.next(), None | Some('\n')) {
                                return Err(ValidationError::UnterminatedString);
                            }
                            col = col.saturating_add(1);
                        }
                        Some(_) => {}
                    }
                    col = col.saturating_add(1);
                }
                after_operand = true;
                after_operator = false;
            }
            '`' => {
                loop {
                    match chars.next() {
                        None => return Err(ValidationError::UnterminatedString),
                        Some('`') => break,
                        Some('\n') => {
                            line = line.saturating_add(1);
                            col = 0;
                        }
                        Some(_) => col = col.saturating_add(1),
                    }
                }
                after_operand = true;
                after_operator = false;
            }
            '(' | '[' | '{' => {
                if after_operand {
                    operators = 1;
                }
                levels.push(Level {
                    open: ch,
                    ..Level::default()
                });
                after_operand = false;
                after_operator = false;
            }
            ')' | ']' | '}' => {
                let expected = match ch {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                let closed = match levels.pop() {
                    Some(level) if level.open == expected && !levels.is_empty() => level,
                    _ => return Err(ValidationError::UnbalancedDelimiters),
                };
                if let Some(parent) = levels.last_mut() {
                    parent.cost = parent.cost.saturating_add(closed.max_cost.max(closed.cost));
                }
                after_operand = true;
                after_operator = false;
            }
            ',' | ';' => {
                if let Some(level) = levels.last_mut() {
                    level.max_cost = level.max_cost.max(level.cost);
                    level.cost = 0;
                }
                after_operand = false;
                after_operator = false;
            }
            ':' if chars.peek() != Some(&'=') => {
                if let Some(level) = levels.last_mut() {
                    level.max_cost = level.max_cost.max(level.cost);
                    level.cost = 0;
                }
                after_operand = false;
                after_operator = false;
            }
            _ if is_operator_char || ch == ':' => {
                // A run of operator characters (`:=`, `!=`, `<=`) is one operator.
                while chars
                    .next_if(|next| "+-*/%&|<>=!.:".contains(*next))
                    .is_some()
                {
                    col = col.saturating_add(1);
                }
                operators = 1;
                after_operand = false;
                after_operator = true;
            }
            _ => {
                let mut word = String::from(ch);
                while let Some(next) = chars.next_if(|next| next.is_alphanumeric() || *next == '_')
                {
                    word.push(next);
                    col = col.saturating_add(1);
                }
                // Membership chains nest like operators.
                let is_in = word == "in";
                if is_in {
                    operators = 1;
                }
                after_operand = !is_in;
                after_operator = is_in;
            }
        }
        if let Some(level) = levels.last_mut() {
            level.cost = level.cost.saturating_add(operators);
            if level.cost > MAX_EXPRESSION_DEPTH {
                return Err(ValidationError::ParseError {
                    line,
                    col,
                    message: format!("expression nests deeper than {MAX_EXPRESSION_DEPTH}"),
                });
            }
        }
    }
    if levels.len() == 1 {
        Ok(())
    } else {
        Err(ValidationError::UnbalancedDelimiters)
    }
}

/// The first line that is neither blank nor a comment must be `package <dotted.name>`.
fn check_package_line(content: &str) -> Result<(), ValidationError> {
    let first = content
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or(ValidationError::MissingPackageDeclaration)?;
    let code = first.split('#').next().unwrap_or_default();
    let mut words = code.split_whitespace();
    if words.next() != Some("package") {
        return Err(ValidationError::MissingPackageDeclaration);
    }
    let name = words.next().unwrap_or_default();
    let valid = !name.is_empty() && name.split('.').all(is_identifier);
    if valid {
        Ok(())
    } else {
        Err(ValidationError::InvalidPackageName)
    }
}

fn is_identifier(word: &str) -> bool {
    let mut chars = word.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses the module with regorus's parser in Rego v1 mode.
fn parse_module(content: &str) -> Result<Module, ValidationError> {
    let source = Source::from_contents_with_limits(
        SOURCE_NAME.to_owned(),
        content.to_owned(),
        MAX_DOCUMENT_BYTES,
        MAX_DOCUMENT_LINES,
    )
    .map_err(|err| parse_error(&err.to_string()))?;
    let mut parser = Parser::new(&source).map_err(|err| parse_error(&err.to_string()))?;
    parser.set_max_col(MAX_DOCUMENT_COLUMN);
    parser
        .enable_rego_v1()
        .map_err(|err| parse_error(&err.to_string()))?;
    parser.parse().map_err(|err| parse_error(&err.to_string()))
}

/// Reads the `--> policy.rego:<line>:<col>` position out of a regorus message.
fn parse_error(message: &str) -> ValidationError {
    let marker = format!("--> {SOURCE_NAME}:");
    let (line, col) = message
        .find(&marker)
        .and_then(|at| message.get(at + marker.len()..))
        .and_then(|rest| {
            let mut numbers = rest.split(|c: char| !c.is_ascii_digit());
            let line = numbers.next()?.parse::<u32>().ok()?;
            let col = numbers.next()?.parse::<u32>().ok()?;
            Some((line, col))
        })
        .unwrap_or((0, 0));
    ValidationError::ParseError {
        line,
        col,
        message: message.trim().to_owned(),
    }
}

/// Package, marker and rule-name rules.
fn check_module(module: &Module, content: &str) -> Result<(), ValidationError> {
    let package = static_path(&module.package.refr);
    if package.as_deref() != Some(&["caracal".to_owned(), "authz".to_owned()][..]) {
        return Err(ValidationError::WrongPackage);
    }
    if !content
        .lines()
        .any(|line| line.trim() == DATA_DOCUMENT_MARKER)
    {
        return Err(ValidationError::NotDataDocument);
    }
    let mut names: Vec<(String, bool)> = module.policy.iter().map(|rule| rule_name(rule)).collect();
    if module.target.is_some() {
        names.push(("__target__".to_owned(), false));
    }
    if names.iter().any(|(name, _)| name == "result") {
        return Err(ValidationError::DefinesResult);
    }
    if names.is_empty() {
        return Err(ValidationError::DefinesNoData);
    }
    if let Some((name, _)) = names
        .iter()
        .find(|(name, is_function)| *is_function || !DATA_ROOTS.contains(&name.as_str()))
    {
        return Err(ValidationError::RuleNotAllowed { name: name.clone() });
    }
    Ok(())
}

/// The rule's root name and whether it is a function.
fn rule_name(rule: &Rule) -> (String, bool) {
    let (refr, is_function) = match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => (refr, false),
            RuleHead::Func { refr, .. } => (refr, true),
        },
        Rule::Default { refr, args, .. } => (refr, !args.is_empty()),
    };
    let name = match chain_root(refr) {
        Expr::Var { value, .. } => value_text(value),
        other => other.span().text().to_owned(),
    };
    (name, is_function)
}

/// The innermost expression of a `a.b[c]` reference chain.
fn chain_root(expr: &Expr) -> &Expr {
    let mut current = expr;
    loop {
        match current {
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => current = refr,
            other => return other,
        }
    }
}

/// The components of a fully static reference (`a.b["c"]`), or `None`.
fn static_path(expr: &Expr) -> Option<Vec<String>> {
    let (root, components) = reference_components(expr);
    let Expr::Var { value, .. } = root else {
        return None;
    };
    let mut path = vec![value_text(value)];
    for component in components {
        path.push(component.static_text()?);
    }
    Some(path)
}

/// One component after the root of a reference chain.
enum Component<'a> {
    Static(String),
    Dynamic(&'a Expr),
}

impl Component<'_> {
    fn static_text(self) -> Option<String> {
        match self {
            Component::Static(text) => Some(text),
            Component::Dynamic(_) => None,
        }
    }
}

/// Splits a reference chain into its root and its components, outermost last.
fn reference_components(expr: &Expr) -> (&Expr, Vec<Component<'_>>) {
    let mut components = Vec::new();
    let mut current = expr;
    loop {
        match current {
            Expr::RefDot { refr, field, .. } => {
                components.push(Component::Static(value_text(&field.1)));
                current = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                let component = match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        Component::Static(value_text(value))
                    }
                    other => Component::Dynamic(other),
                };
                components.push(component);
                current = refr;
            }
            root => {
                components.reverse();
                return (root, components);
            }
        }
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.to_string(),
        other => other.to_json_str().unwrap_or_default(),
    }
}

/// The first reference violation of each kind, found by walking every expression.
#[derive(Default)]
struct ReferenceWalk {
    banned_builtin: Option<String>,
    input_reference: bool,
    data_reference: Option<String>,
    with_modifier: bool,
}

/// A node still to visit. The walk keeps its own stack, so a long chain of operators cannot
/// exhaust the thread's stack.
enum Node<'a> {
    Expr(&'a Expr),
    Query(&'a Query),
}

impl ReferenceWalk {
    fn run(module: &Module) -> Result<(), ValidationError> {
        let mut walk = Self::default();
        for import in &module.imports {
            walk.visit_import(&import.refr);
        }
        let mut stack: Vec<Node<'_>> = Vec::new();
        for rule in module.policy.iter().rev() {
            push_rule(rule, &mut stack);
        }
        while let Some(node) = stack.pop() {
            match node {
                Node::Expr(expr) => walk.visit_expr(expr, &mut stack),
                Node::Query(query) => walk.visit_query(query, &mut stack),
            }
        }
        walk.verdict()
    }

    fn verdict(self) -> Result<(), ValidationError> {
        if let Some(name) = self.banned_builtin {
            return Err(ValidationError::ForbiddenBuiltin { name });
        }
        if self.input_reference {
            return Err(ValidationError::InputReference);
        }
        if let Some(path) = self.data_reference {
            return Err(ValidationError::DataReference { path });
        }
        if self.with_modifier {
            return Err(ValidationError::WithNotAllowed);
        }
        Ok(())
    }

    fn visit_import(&mut self, refr: &Expr) {
        let (root, components) = reference_components(refr);
        self.check_root(root, components);
    }

    fn visit_query<'a>(&mut self, query: &'a Query, stack: &mut Vec<Node<'a>>) {
        for stmt in query.stmts.iter().rev() {
            push_statement(stmt, stack);
            if !stmt.with_mods.is_empty() {
                self.with_modifier = true;
            }
        }
    }

    fn visit_expr<'a>(&mut self, expr: &'a Expr, stack: &mut Vec<Node<'a>>) {
        match expr {
            Expr::RefDot { .. } | Expr::RefBrack { .. } | Expr::Var { .. } => {
                let (root, components) = reference_components(expr);
                for component in components.iter().rev() {
                    if let Component::Dynamic(index) = component {
                        stack.push(Node::Expr(index));
                    }
                }
                match root {
                    Expr::Var { .. } => self.check_root(root, components),
                    other => stack.push(Node::Expr(other)),
                }
            }
            Expr::Call { fcn, params, .. } => {
                for param in params.iter().rev() {
                    stack.push(Node::Expr(param));
                }
                let (root, components) = reference_components(fcn);
                if let Some(path) = static_path(fcn) {
                    let name = path.join(".");
                    if BANNED_BUILTINS.contains(&name.as_str()) && self.banned_builtin.is_none() {
                        self.banned_builtin = Some(name);
                    }
                }
                for component in components.iter().rev() {
                    if let Component::Dynamic(index) = component {
                        stack.push(Node::Expr(index));
                    }
                }
                self.check_root(root, components);
            }
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for item in items.iter().rev() {
                    stack.push(Node::Expr(item));
                }
            }
            Expr::Object { fields, .. } => {
                for (_, key, value) in fields.iter().rev() {
                    stack.push(Node::Expr(value));
                    stack.push(Node::Expr(key));
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                stack.push(Node::Query(query));
                stack.push(Node::Expr(term));
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                stack.push(Node::Query(query));
                stack.push(Node::Expr(value));
                stack.push(Node::Expr(key));
            }
            Expr::UnaryExpr { expr, .. } => stack.push(Node::Expr(expr)),
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                stack.push(Node::Expr(rhs));
                stack.push(Node::Expr(lhs));
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                stack.push(Node::Expr(collection));
                stack.push(Node::Expr(value));
                if let Some(key) = key {
                    stack.push(Node::Expr(key));
                }
            }
        }
    }

    /// Checks the root variable of a reference: `input` is never allowed, and `data` only as
    /// `data.caracal.authz.<root>`.
    fn check_root(&mut self, root: &Expr, components: Vec<Component<'_>>) {
        let Expr::Var { value, .. } = root else {
            return;
        };
        match value_text(value).as_str() {
            "input" => self.input_reference = true,
            "data" => {
                let mut path = vec!["data".to_owned()];
                path.extend(components.into_iter().map_while(Component::static_text));
                let allowed = path.len() >= 4
                    && path[1] == "caracal"
                    && path[2] == "authz"
                    && DATA_ROOTS.contains(&path[3].as_str());
                if !allowed && self.data_reference.is_none() {
                    self.data_reference = Some(path.join("."));
                }
            }
            _ => {}
        }
    }
}

fn push_rule<'a>(rule: &'a Rule, stack: &mut Vec<Node<'a>>) {
    match rule {
        Rule::Spec { head, bodies, .. } => {
            for body in bodies.iter().rev() {
                stack.push(Node::Query(&body.query));
                if let Some(assign) = &body.assign {
                    stack.push(Node::Expr(&assign.value));
                }
            }
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    if let Some(assign) = assign {
                        stack.push(Node::Expr(&assign.value));
                    }
                    push_head_indexes(refr, stack);
                }
                RuleHead::Set { refr, key, .. } => {
                    if let Some(key) = key {
                        stack.push(Node::Expr(key));
                    }
                    push_head_indexes(refr, stack);
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    if let Some(assign) = assign {
                        stack.push(Node::Expr(&assign.value));
                    }
                    for arg in args.iter().rev() {
                        stack.push(Node::Expr(arg));
                    }
                    push_head_indexes(refr, stack);
                }
            }
        }
        Rule::Default {
            refr, args, value, ..
        } => {
            stack.push(Node::Expr(value));
            for arg in args.iter().rev() {
                stack.push(Node::Expr(arg));
            }
            push_head_indexes(refr, stack);
        }
    }
}

/// A rule head names the rule (not a reference to read), so only its dynamic keys are walked.
fn push_head_indexes<'a>(refr: &'a Expr, stack: &mut Vec<Node<'a>>) {
    let (_, components) = reference_components(refr);
    for component in components.into_iter().rev() {
        if let Component::Dynamic(index) = component {
            stack.push(Node::Expr(index));
        }
    }
}

fn push_statement<'a>(stmt: &'a LiteralStmt, stack: &mut Vec<Node<'a>>) {
    // The target of a `with` is what it replaces, not a read; `with` itself is flagged.
    for modifier in stmt.with_mods.iter().rev() {
        stack.push(Node::Expr(&modifier.r#as));
    }
    match &stmt.literal {
        Literal::SomeVars { .. } => {}
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => {
            stack.push(Node::Expr(collection));
            stack.push(Node::Expr(value));
            if let Some(key) = key {
                stack.push(Node::Expr(key));
            }
        }
        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => stack.push(Node::Expr(expr)),
        Literal::Every { domain, query, .. } => {
            stack.push(Node::Query(query));
            stack.push(Node::Expr(domain));
        }
    }
}

#[cfg(test)]
mod tests;
