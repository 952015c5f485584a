//! The grammar of a `print fmt:` line, built with `nom`: the format string (adjacent string
//! literals concatenated) and the C argument expressions, into an [`Expr`] tree whose
//! `REC->field` references are resolved against the event's fields once.
//!
//! Tokens and operands (literals, `REC->field`, casts, parentheses, the helper calls) are nom
//! parsers; operators are combined as libtraceevent's `process_op` combines them, because the
//! point is to print what `trace-cmd report -N` prints, and libtraceevent's tree is not C's in
//! three cases that real formats hit (see [`Grammar::process_op`]): a parenthesized operand
//! that binds more loosely than its operator is rotated into it (`x & (A | B)` evaluates as
//! `(x & A) | B`), operators of equal priority group to the right, and `c ? a : b` takes one
//! operand after the colon. Identifiers that are not functions are atoms (their numeric value
//! is `strtoull`'s), and only the helper functions libtraceevent knows without a plugin are
//! functions: any other call makes the whole print fmt unparsable, as it makes libtraceevent
//! print `[FAILED TO PARSE]`.
//!
//! Input is untrusted (a trace file's format text): nesting is limited to [`MAX_DEPTH`] and a
//! print fmt to [`MAX_NODES`] expression nodes, so that neither parsing, evaluating nor
//! dropping a tree can exhaust the stack.

use std::cell::Cell;

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{char, multispace0};
use nom::combinator::{opt, peek};
use nom::error::{Error, ErrorKind};
use nom::sequence::preceded;
use nom::{IResult, Parser};

use crate::bin::format::FieldFormat;

/// Deepest nesting accepted, counted in parser levels: a parenthesis costs three, each
/// operator of a chain that groups to the right (`a | b | c ...`) one. Enough for 30 levels of
/// parentheses or a 90-operand chain, far beyond any kernel's format, while a hostile one
/// stays under 700 KiB of stack in a debug build (measured; about 100 KiB optimized), well
/// within the 2 MiB of the rayon threads that render.
pub const MAX_DEPTH: u32 = 100;
/// Most expression nodes one print fmt may have.
pub const MAX_NODES: u32 = 2048;

type In<'a> = &'a str;
type Res<'a, T> = IResult<In<'a>, T>;

/// A field an expression names, resolved to its index in the event's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldRef {
    pub name: Box<str>,
    pub index: Option<usize>,
}

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    Rem,
    Add,
    Sub,
    Shl,
    Shr,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    BitAnd,
    BitXor,
    BitOr,
    And,
    Or,
}

/// A unary operator (`-x`, `+x`, `!x`, `~x`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnOp {
    Neg,
    Plus,
    Not,
    BitNot,
}

/// One `{ value, "name" }` entry of a `__print_symbolic` / `__print_flags` table: the value as
/// libtraceevent keeps it (the literal's text, or a constant expression's value in decimal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sym {
    pub value: Box<str>,
    pub name: Box<str>,
}

/// An argument expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    /// A number, identifier (several words joined by one space), character or string literal
    /// (its text between the quotes, escapes as written).
    Atom(Box<str>),
    /// `REC->field`.
    Field(FieldRef),
    /// `(type) operand`: the type's words joined by spaces, ` *` per pointer level.
    Cast(Box<str>, Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `c ? a : b`.
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `a[i]`.
    Index(Box<Expr>, Box<Expr>),
    /// `__print_symbolic(value, {v, "name"}, ...)`.
    Symbolic(Box<Expr>, Vec<Sym>),
    /// `__print_flags(value, "delim", {v, "name"}, ...)`.
    Flags(Box<Expr>, Box<str>, Vec<Sym>),
    /// `__print_hex(array, len)` (bytes separated by spaces) or `__print_hex_str` (not).
    Hex {
        array: Box<Expr>,
        len: Box<Expr>,
        spaced: bool,
    },
    /// `__print_array(array, count, element size)`.
    IntArray {
        array: Box<Expr>,
        count: Box<Expr>,
        elem_size: Box<Expr>,
    },
    /// `__get_str(field)`.
    Str(FieldRef),
    /// `__get_dynamic_array(field)` (and `__get_sockaddr`).
    DynArray(FieldRef),
    /// `__get_dynamic_array_len(field)`.
    DynArrayLen(FieldRef),
    /// `__get_bitmask(field)`.
    Bitmask(FieldRef),
    /// `__get_cpumask(field)`.
    Cpumask(FieldRef),
    /// libtraceevent's empty argument: the left of a unary operator that a rotation moved
    /// under a binary one (evaluates to 0, prints nothing).
    Null,
}

/// Why a print fmt could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrintFmtError {
    /// The text does not start with the format string.
    #[error("Print fmt does not start with a string literal")]
    NoFormatString,
    /// An argument could not be parsed.
    #[error("Print fmt: cannot parse the argument at byte {at}")]
    Syntax {
        /// Byte offset in the print fmt text.
        at: usize,
    },
    /// A call of a function libtraceevent does not know without a plugin.
    #[error("Print fmt calls `{name}`, which has no definition without a plugin")]
    UnknownFunction {
        /// The function.
        name: Box<str>,
    },
    /// A field the print fmt names is not in the format.
    #[error("Print fmt names field `{name}`, which the format does not have")]
    UnknownField {
        /// The field.
        name: Box<str>,
    },
    /// Nesting or size beyond the limits.
    #[error("Print fmt nests deeper or is larger than accepted")]
    TooComplex,
    /// A conversion has no argument, or two `*`.
    #[error("Print fmt conversion {index} has no matching argument")]
    MissingArgument {
        /// 0-based conversion number.
        index: usize,
    },
    /// A `{ value, "name" }` entry whose value or name is not a constant libtraceevent folds.
    #[error("Print fmt has a symbol table entry that is not constant")]
    BadSymbol,
}

/// The parsed print fmt: the format string as written and the argument expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub format: String,
    pub args: Vec<Expr>,
}

/// The parser's context: the event's fields, the kernel's `long` size, and the limits.
pub(crate) struct Grammar<'f> {
    fields: &'f [FieldFormat],
    long_size: u32,
    full: &'f str,
    depth: Cell<u32>,
    nodes: Cell<u32>,
    /// The first semantic failure (an unknown function or field), reported over nom's
    /// position-only error.
    failure: Cell<Option<PrintFmtError>>,
}

fn fail<T>(i: In<'_>) -> Res<'_, T> {
    Err(nom::Err::Error(Error::new(i, ErrorKind::Verify)))
}

fn cut_fail<T>(i: In<'_>) -> Res<'_, T> {
    Err(nom::Err::Failure(Error::new(i, ErrorKind::Verify)))
}

fn ws(i: In<'_>) -> Res<'_, In<'_>> {
    multispace0(i)
}

fn is_item(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// An item token: what libtraceevent reads as one word (identifiers and numbers).
fn item(i: In<'_>) -> Res<'_, In<'_>> {
    preceded(ws, take_while1(is_item)).parse(i)
}

/// A punctuation token after optional white space.
fn punct<'a>(t: &'static str) -> impl Parser<In<'a>, Output = In<'a>, Error = Error<In<'a>>> {
    preceded(ws, tag(t))
}

/// One quoted literal's body (escapes kept as written; `\\` cancels itself). Like
/// libtraceevent's tokenizer, an unescaped character that is not printable ASCII (a tab, a
/// UTF-8 byte) other than a newline ends the literal, and is dropped.
fn quoted(quote: char) -> impl Fn(In<'_>) -> Res<'_, &str> {
    move |i: In<'_>| {
        let (rest, _) = preceded(ws, char(quote)).parse(i)?;
        let mut escaped = false;
        for (at, c) in rest.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == quote || !(c == ' ' || c.is_ascii_graphic() || c == '\n') {
                return Ok((&rest[at + c.len_utf8()..], &rest[..at]));
            }
        }
        fail(i)
    }
}

/// Adjacent string literals, concatenated as C (and libtraceevent) do.
fn string_lit(i: In<'_>) -> Res<'_, String> {
    let (mut rest, first) = quoted('"')(i)?;
    let mut text = first.to_owned();
    while let Ok((after, more)) = quoted('"')(rest) {
        text.push_str(more);
        rest = after;
    }
    Ok((rest, text))
}

/// An operator token where an expression may continue (libtraceevent's `TEP_EVENT_OP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpTok {
    Bin(BinOp),
    Question,
    Colon,
    Bracket,
    /// Any other punctuation (`.`, `]`, `}`, `->` after an operand, `++`, `=`): libtraceevent
    /// fails on it.
    Other,
}

impl OpTok {
    /// libtraceevent's priority (`get_op_prio`; smaller binds tighter, `[` and unknown -1).
    fn prio(self) -> i32 {
        match self {
            Self::Bin(b) => lte_prio(b),
            Self::Question => 16,
            Self::Bracket | Self::Colon | Self::Other => -1,
        }
    }
}

/// libtraceevent's priority of a binary operator.
fn lte_prio(op: BinOp) -> i32 {
    match op {
        BinOp::Mul | BinOp::Div | BinOp::Rem => 6,
        BinOp::Add | BinOp::Sub => 7,
        BinOp::Shl | BinOp::Shr => 8,
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 9,
        BinOp::Eq | BinOp::Ne => 10,
        BinOp::BitAnd => 11,
        BinOp::BitXor => 12,
        BinOp::BitOr => 13,
        BinOp::And => 14,
        BinOp::Or => 15,
    }
}

/// libtraceevent's priority of the operator at the top of an operand node (`get_op_prio` of
/// its `op`): unary `-`/`+` count as 7, `!`/`~` as 4, `?:` as 16; `None` when the operand is
/// not an operator node.
fn node_op_prio(e: &Expr) -> Option<i32> {
    match e {
        Expr::Binary(op, ..) => Some(lte_prio(*op)),
        Expr::Unary(UnOp::Neg | UnOp::Plus, _) => Some(7),
        Expr::Unary(UnOp::Not | UnOp::BitNot, _) => Some(4),
        Expr::Cond(..) => Some(16),
        Expr::Index(..) => Some(-1),
        _ => None,
    }
}

/// The operator token after an operand, if the expression continues there; `None` at a
/// delimiter (`,` `(` `)`), a word, a quote or the end.
fn op_token(i: In<'_>) -> Option<(In<'_>, OpTok)> {
    let (t, _) = ws(i).ok()?;
    let c = t.chars().next()?;
    if is_item(c) || matches!(c, '(' | ')' | ',' | '"' | '\'') || !c.is_ascii_graphic() {
        return None;
    }
    const TWO: [(&str, BinOp); 8] = [
        ("||", BinOp::Or),
        ("&&", BinOp::And),
        ("==", BinOp::Eq),
        ("!=", BinOp::Ne),
        ("<=", BinOp::Le),
        (">=", BinOp::Ge),
        ("<<", BinOp::Shl),
        (">>", BinOp::Shr),
    ];
    for (tok, op) in TWO {
        if let Some(rest) = t.strip_prefix(tok) {
            // `<<=`, `>>=` are assignments.
            if rest.starts_with('=') {
                return Some((rest, OpTok::Other));
            }
            return Some((rest, OpTok::Bin(op)));
        }
    }
    let rest = &t[c.len_utf8()..];
    let tok = match c {
        '-' | '+' | '|' | '&' if rest.starts_with([c, '=']) => OpTok::Other,
        '-' if rest.starts_with('>') => OpTok::Other,
        '|' => OpTok::Bin(BinOp::BitOr),
        '&' => OpTok::Bin(BinOp::BitAnd),
        '^' => OpTok::Bin(BinOp::BitXor),
        '<' => OpTok::Bin(BinOp::Lt),
        '>' => OpTok::Bin(BinOp::Gt),
        '+' => OpTok::Bin(BinOp::Add),
        '-' => OpTok::Bin(BinOp::Sub),
        '*' => OpTok::Bin(BinOp::Mul),
        '/' => OpTok::Bin(BinOp::Div),
        '%' => OpTok::Bin(BinOp::Rem),
        '?' => OpTok::Question,
        ':' => OpTok::Colon,
        '[' => OpTok::Bracket,
        _ => OpTok::Other,
    };
    Some((rest, tok))
}

/// Where a following operator attaches inside a node `process_op` built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// `?:` and `[]` nodes: a following operator always takes the whole node.
    None,
    /// The right operand of a binary node.
    Right,
    /// After a rotation: the left child (the node that took the operator).
    Rotated,
}

/// `left op right` as libtraceevent builds it: the node, its stored priority, and the slot a
/// tighter operator after it extends. When `right` is an operator node binding more loosely
/// than `op`, the two are rotated (`left op (a R b)` becomes `(left op a) R b`).
fn rotate(op: BinOp, left: Expr, right: Expr) -> (Expr, i32, Slot) {
    let p = lte_prio(op);
    let loose = node_op_prio(&right).is_some_and(|rp| p < rp);
    if !loose {
        return (Expr::Binary(op, Box::new(left), Box::new(right)), p, Slot::Right);
    }
    match right {
        Expr::Binary(rop, rl, rr) => (
            Expr::Binary(rop, Box::new(Expr::Binary(op, Box::new(left), rl)), rr),
            lte_prio(rop),
            Slot::Rotated,
        ),
        Expr::Unary(uop, x) => {
            // A unary node's left is libtraceevent's empty argument (0).
            let inner = Expr::Binary(op, Box::new(left), Box::new(Expr::Null));
            let rop = if uop == UnOp::Neg { BinOp::Sub } else { BinOp::Add };
            (Expr::Binary(rop, Box::new(inner), x), 0, Slot::Rotated)
        }
        Expr::Cond(c, yes, no) => {
            (Expr::Cond(Box::new(Expr::Binary(op, Box::new(left), c)), yes, no), 0, Slot::Rotated)
        }
        other => (Expr::Binary(op, Box::new(left), Box::new(other)), p, Slot::Right),
    }
}

/// Replaces the subtree at `slot` with `f(subtree)`.
fn replace_slot<'a>(
    node: Expr,
    slot: Slot,
    f: impl FnOnce(Expr) -> Res<'a, Expr>,
) -> Res<'a, Expr> {
    match (slot, node) {
        (Slot::Right, Expr::Binary(op, l, r)) => {
            let (i, r) = f(*r)?;
            Ok((i, Expr::Binary(op, l, Box::new(r))))
        }
        (Slot::Rotated, Expr::Binary(op, l, r)) => {
            let (i, l) = f(*l)?;
            Ok((i, Expr::Binary(op, Box::new(l), r)))
        }
        (Slot::Rotated, Expr::Cond(c, yes, no)) => {
            let (i, c) = f(*c)?;
            Ok((i, Expr::Cond(Box::new(c), yes, no)))
        }
        (_, other) => f(other),
    }
}

/// `(REC)->`: a parenthesized `REC`, which is a field reference, not a cast or a group.
fn is_rec_paren(inner: &str) -> bool {
    let t = inner.trim_start();
    t.strip_prefix("REC").is_some_and(|r| r.trim_start().starts_with(')'))
}

impl<'f> Grammar<'f> {
    pub(crate) fn new(fields: &'f [FieldFormat], long_size: u32, full: &'f str) -> Self {
        Self {
            fields,
            long_size,
            full,
            depth: Cell::new(0),
            nodes: Cell::new(0),
            failure: Cell::new(None),
        }
    }

    fn offset(&self, i: In<'_>) -> usize {
        self.full.len().saturating_sub(i.len())
    }

    fn note(&self, e: PrintFmtError) {
        let prev = self.failure.take();
        self.failure.set(Some(prev.unwrap_or(e)));
    }

    /// Counts one node; fails (unrecoverably) past the budget.
    fn node<'a>(&self, i: In<'a>, e: Expr) -> Res<'a, Expr> {
        let n = self.nodes.get() + 1;
        self.nodes.set(n);
        if n > MAX_NODES {
            self.note(PrintFmtError::TooComplex);
            return cut_fail(i);
        }
        Ok((i, e))
    }

    /// Runs `f` one nesting level deeper.
    fn nested<'a, T>(&self, i: In<'a>, f: impl FnOnce(In<'a>) -> Res<'a, T>) -> Res<'a, T> {
        let d = self.depth.get() + 1;
        if d > MAX_DEPTH {
            self.note(PrintFmtError::TooComplex);
            return cut_fail(i);
        }
        self.depth.set(d);
        let r = f(i);
        self.depth.set(d - 1);
        r
    }

    fn field_ref(&self, name: &str) -> FieldRef {
        FieldRef { name: name.into(), index: self.fields.iter().position(|f| &*f.name == name) }
    }

    /// A field a helper names: it must exist (libtraceevent's `tep_find_field`).
    fn existing_field<'a>(&self, i: In<'a>, name: &str) -> Res<'a, FieldRef> {
        let r = self.field_ref(name);
        if r.index.is_none() {
            self.note(PrintFmtError::UnknownField { name: name.into() });
            return cut_fail(i);
        }
        Ok((i, r))
    }

    /// The whole print fmt.
    pub(crate) fn print_fmt(&self, i: In<'f>) -> Result<Parsed, PrintFmtError> {
        let (mut rest, format) = string_lit(i)
            .map_err(|_| self.failure.take().unwrap_or(PrintFmtError::NoFormatString))?;
        let mut args = Vec::new();
        if let Ok((after, _)) = punct(",").parse(rest) {
            rest = after;
            loop {
                match self.expr(rest) {
                    Ok((after, e)) => {
                        args.push(fold_constants(e));
                        rest = after;
                    }
                    Err(_) => {
                        return Err(self
                            .failure
                            .take()
                            .unwrap_or(PrintFmtError::Syntax { at: self.offset(rest) }));
                    }
                }
                // Like libtraceevent, whatever follows a complete argument other than a comma
                // ends the list.
                match punct(",").parse(rest) {
                    Ok((after, _)) => rest = after,
                    Err(_) => break,
                }
            }
        } else if !rest.trim().is_empty() {
            return Err(PrintFmtError::Syntax { at: self.offset(rest) });
        }
        Ok(Parsed { format, args })
    }

    /// An expression: an operand and the operators after it (libtraceevent's `process_arg`
    /// then `process_op`).
    pub(crate) fn expr<'a>(&self, i: In<'a>) -> Res<'a, Expr> {
        self.nested(i, |i| {
            let (i, first) = self.operand(i)?;
            match op_token(i) {
                Some((_, OpTok::Colon)) | None => Ok((i, first)),
                Some((after, op)) => self.process_op(first, op, after),
            }
        })
    }

    /// libtraceevent's `process_op`: `arg` is the expression so far, `op` the operator just
    /// read. The tree is built as libtraceevent builds it, which is not always C's:
    ///
    /// - the right operand is one operand (`process_arg_token`); when it is itself an operator
    ///   node binding more loosely than `op` (typically a parenthesized `(A | B)` after `&`),
    ///   the two are rotated as if there were no parentheses: `x & (A | B)` becomes
    ///   `(x & A) | B` — what trace-cmd prints for `timer_start`'s flags;
    /// - a following operator that binds more loosely than `op` takes the whole expression as
    ///   its left operand; otherwise (tighter *or equal*) it extends the right operand, so
    ///   `a - b - c` is `a - (b - c)`;
    /// - `c ? a : b` takes one operand after `:`, and `x[i]` one operand inside the brackets.
    fn process_op<'a>(&self, arg: Expr, op: OpTok, i: In<'a>) -> Res<'a, Expr> {
        self.nested(i, |i| {
            let (i, node, stored, slot) = match op {
                OpTok::Question => {
                    let (i, yes) = self.expr(i)?;
                    let (i, _) = punct(":").parse(i)?;
                    let (i, no) = self.operand(i)?;
                    let (i, node) =
                        self.node(i, Expr::Cond(Box::new(arg), Box::new(yes), Box::new(no)))?;
                    (i, node, 0, Slot::None)
                }
                OpTok::Bracket => {
                    let (i, index) = self.operand(i)?;
                    let (i, _) = punct("]").parse(i)?;
                    let (i, node) = self.node(i, Expr::Index(Box::new(arg), Box::new(index)))?;
                    (i, node, 0, Slot::None)
                }
                OpTok::Bin(bin) => {
                    let (i, right) = self.operand(i)?;
                    let (node, stored, slot) = rotate(bin, arg, right);
                    let (i, node) = self.node(i, node)?;
                    (i, node, stored, slot)
                }
                OpTok::Colon | OpTok::Other => return cut_fail(i),
            };
            let Some((after, next)) = op_token(i) else { return Ok((i, node)) };
            if next == OpTok::Colon {
                return Ok((i, node));
            }
            if next.prio() > stored || slot == Slot::None {
                return self.process_op(node, next, after);
            }
            // The next operator extends the right operand (after a rotation, the node that
            // took `op`, now the left child).
            replace_slot(node, slot, |sub| self.process_op(sub, next, after))
        })
    }

    /// One operand (libtraceevent's `process_arg_token`): a primary, a parenthesized
    /// expression, a cast, or a unary operator with its operand and the operators after it.
    fn operand<'a>(&self, i: In<'a>) -> Res<'a, Expr> {
        self.nested(i, |i| {
            let (t, _) = ws(i)?;
            let rest = t.get(1..).unwrap_or("");
            let op = match t.as_bytes().first() {
                Some(b'-') if !rest.starts_with(['-', '>', '=']) => Some(UnOp::Neg),
                Some(b'+') if !rest.starts_with(['+', '=']) => Some(UnOp::Plus),
                Some(b'!') if !rest.starts_with('=') => Some(UnOp::Not),
                Some(b'~') => Some(UnOp::BitNot),
                _ => None,
            };
            if let Some(op) = op {
                let (i, x) = self.operand(rest)?;
                let (i, node) = self.node(i, Expr::Unary(op, Box::new(x)))?;
                return match op_token(i) {
                    None | Some((_, OpTok::Colon)) => Ok((i, node)),
                    // `[` binds to the operand (its priority is below the unary's 0).
                    Some((after, OpTok::Bracket)) => {
                        let Expr::Unary(op, x) = node else { return Ok((i, node)) };
                        let (i, x) = self.process_op(*x, OpTok::Bracket, after)?;
                        Ok((i, Expr::Unary(op, Box::new(x))))
                    }
                    Some((after, next)) => self.process_op(node, next, after),
                };
            }
            if let Ok((i, e)) = self.cast(t) {
                return Ok((i, e));
            }
            if let Some(inner) = t.strip_prefix('(')
                && !is_rec_paren(inner)
            {
                return self.nested(inner, |i| {
                    let (i, e) = self.expr(i)?;
                    let (i, _) = punct(")").parse(i)?;
                    Ok((i, e))
                });
            }
            self.primary(t)
        })
    }

    /// `(type) operand`: a parenthesized run of words (and `*`s) followed by something that
    /// starts an operand.
    fn cast<'a>(&self, i: In<'a>) -> Res<'a, Expr> {
        let (mut i, _) = punct("(").parse(i)?;
        let mut words: Vec<&str> = Vec::new();
        while let Ok((after, w)) = item(i) {
            words.push(w);
            i = after;
        }
        if words.is_empty() || words == ["REC"] {
            return fail(i);
        }
        let mut ty = words.join(" ");
        while let Ok((after, _)) = punct("*").parse(i) {
            ty.push_str(" *");
            i = after;
        }
        let (i, _) = punct(")").parse(i)?;
        let (t, _) = ws(i)?;
        match t.chars().next() {
            Some(c) if is_item(c) || matches!(c, '(' | '"' | '\'') => {}
            _ => return fail(i),
        }
        let (i, operand) = self.operand(t)?;
        self.node(i, Expr::Cast(ty.into(), Box::new(operand)))
    }

    fn primary<'a>(&self, i: In<'a>) -> Res<'a, Expr> {
        let (t, _) = ws(i)?;
        // REC->field, and (REC)->field.
        if let Ok((i, name)) = alt((
            preceded((tag("REC"), punct("->")), item),
            preceded((tag("("), punct("REC"), punct(")"), punct("->")), item),
        ))
        .parse(t)
        {
            return self.node(i, Expr::Field(self.field_ref(name)));
        }
        if t.starts_with('"') {
            let (i, s) = string_lit(t)?;
            return self.node(i, Expr::Atom(s.into()));
        }
        if t.starts_with('\'') {
            let (i, s) = quoted('\'')(t)?;
            return self.node(i, Expr::Atom(s.into()));
        }
        let (i, word) = item(t)?;
        if peek(punct("(")).parse(i).is_ok() {
            let (i, _) = punct("(").parse(i)?;
            return self.nested(i, |i| self.call(word, i));
        }
        // Atoms can be several words (`unsigned long`).
        let mut atom = word.to_owned();
        let mut i = i;
        while let Ok((after, w)) = item(i) {
            atom.push(' ');
            atom.push_str(w);
            i = after;
        }
        self.node(i, Expr::Atom(atom.into()))
    }

    /// The arguments of a helper call, after its `(`.
    fn call<'a>(&self, name: &str, i: In<'a>) -> Res<'a, Expr> {
        let field_arg = |i: In<'a>| -> Res<'a, FieldRef> {
            let (i, f) = item(i)?;
            let (i, _) = punct(")").parse(i)?;
            self.existing_field(i, f)
        };
        let named_arg = |i: In<'a>| -> Res<'a, FieldRef> {
            let (i, f) = item(i)?;
            let (i, _) = punct(")").parse(i)?;
            Ok((i, self.field_ref(f)))
        };
        let args = |i: In<'a>, n: usize| -> Res<'a, Vec<Expr>> {
            let mut out = Vec::with_capacity(n);
            let mut i = i;
            for k in 0..n {
                // Folded like a top-level argument (`alloc_and_process_delim`).
                let (after, e) = self.expr(i).map(|(r, e)| (r, fold_constants(e)))?;
                let (after, _) = punct(if k + 1 == n { ")" } else { "," }).parse(after)?;
                out.push(e);
                i = after;
            }
            Ok((i, out))
        };
        match name {
            "__print_symbolic" => {
                let (i, value) = self.expr(i)?;
                let (i, _) = punct(",").parse(i)?;
                let (i, syms) = self.symbols(i)?;
                self.node(i, Expr::Symbolic(Box::new(value), syms))
            }
            "__print_flags" => {
                let (i, value) = self.expr(i)?;
                let (i, _) = punct(",").parse(i)?;
                let (i, delim) =
                    opt(alt((string_lit, |i| item(i).map(|(r, w)| (r, w.to_owned()))))).parse(i)?;
                let (i, _) = punct(",").parse(i)?;
                let (i, syms) = self.symbols(i)?;
                self.node(i, Expr::Flags(Box::new(value), delim.unwrap_or_default().into(), syms))
            }
            "__print_hex" | "__print_hex_str" => {
                let (i, mut a) = args(i, 2)?;
                let len = a.pop().map(Box::new);
                let array = a.pop().map(Box::new);
                let (Some(array), Some(len)) = (array, len) else { return fail(i) };
                self.node(i, Expr::Hex { array, len, spaced: name == "__print_hex" })
            }
            "__print_array" => {
                let (i, mut a) = args(i, 3)?;
                let elem_size = a.pop().map(Box::new);
                let count = a.pop().map(Box::new);
                let array = a.pop().map(Box::new);
                let (Some(array), Some(count), Some(elem_size)) = (array, count, elem_size) else {
                    return fail(i);
                };
                self.node(i, Expr::IntArray { array, count, elem_size })
            }
            "__get_str" | "__get_rel_str" => {
                let (i, f) = named_arg(i)?;
                self.node(i, Expr::Str(f))
            }
            "__get_bitmask" | "__get_rel_bitmask" => {
                let (i, f) = named_arg(i)?;
                self.node(i, Expr::Bitmask(f))
            }
            "__get_cpumask" | "__get_rel_cpumask" => {
                let (i, f) = named_arg(i)?;
                self.node(i, Expr::Cpumask(f))
            }
            "__get_dynamic_array"
            | "__get_rel_dynamic_array"
            | "__get_sockaddr"
            | "__get_sockaddr_rel" => {
                let (i, f) = field_arg(i)?;
                if punct("[").parse(i).is_ok() {
                    // libtraceevent rejects an index right after `__get_dynamic_array(f)`.
                    return cut_fail(i);
                }
                self.node(i, Expr::DynArray(f))
            }
            "__get_dynamic_array_len" | "__get_rel_dynamic_array_len" => {
                let (i, f) = field_arg(i)?;
                self.node(i, Expr::DynArrayLen(f))
            }
            "__builtin_expect" => {
                // libtraceevent takes one operand (no binary operators) and any word after it.
                let (i, e) = self.operand(i)?;
                let (i, _) = punct(",").parse(i)?;
                let (i, _) = item(i)?;
                let (i, _) = punct(")").parse(i)?;
                Ok((i, e))
            }
            "sizeof" => self.size_of(i),
            _ => {
                self.note(PrintFmtError::UnknownFunction { name: name.into() });
                cut_fail(i)
            }
        }
    }

    /// `sizeof(...)` of the types and fields libtraceevent sizes.
    fn size_of<'a>(&self, i: In<'a>) -> Res<'a, Expr> {
        let (i, first) = item(i)?;
        let (i, size) = match first {
            "int" => (i, 4),
            "unsigned" => match item(i) {
                Ok((after, "int")) => (after, 4),
                Ok((after, "long")) => match item(after) {
                    Ok((after, "long")) => (after, 8),
                    _ => (after, u64::from(self.long_size)),
                },
                Ok(_) => return fail(i),
                Err(_) => (i, 4),
            },
            "long" => match item(i) {
                Ok((after, "long")) => (after, 8),
                _ => (i, u64::from(self.long_size)),
            },
            "REC" => {
                let (i, _) = punct("->").parse(i)?;
                let (i, name) = item(i)?;
                let r = self.field_ref(name);
                let Some(f) = r.index.and_then(|k| self.fields.get(k)) else { return fail(i) };
                if super::eval::is_array(f) {
                    return fail(i);
                }
                (i, u64::from(f.size))
            }
            _ => return fail(i),
        };
        let (i, _) = punct(")").parse(i)?;
        self.node(i, Expr::Atom(size.to_string().into()))
    }

    /// `{ value, "name" }, ...` up to and including the closing `)` of the call.
    fn symbols<'a>(&self, i: In<'a>) -> Res<'a, Vec<Sym>> {
        let mut out = Vec::new();
        let mut i = i;
        loop {
            let Ok((after, _)) = punct("{").parse(i) else { break };
            let (after, value) = self.expr(after)?;
            let (after, _) = punct(",").parse(after)?;
            let (after, name) = self.operand(after)?;
            let (after, _) = punct("}").parse(after)?;
            let (Some(value), Some(name)) = (const_text(&value), const_text(&name)) else {
                self.note(PrintFmtError::BadSymbol);
                return cut_fail(i);
            };
            out.push(Sym { value: value.into(), name: name.into() });
            i = after;
            match punct(",").parse(i) {
                Ok((after, _)) => i = after,
                Err(_) => break,
            }
        }
        if out.is_empty() {
            return fail(i);
        }
        let (i, _) = punct(")").parse(i)?;
        Ok((i, out))
    }
}

/// `strtoull(s, NULL, 0)`: optional sign, `0x` hex, leading-`0` octal or decimal, stopping at
/// the first other character; saturating at `u64::MAX` as glibc does.
pub(crate) fn strtoull(s: &str) -> u64 {
    let s = s.trim_start();
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if h.starts_with(|c: char| c.is_ascii_hexdigit()) { (16, h) } else { (8, "0") }
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let mut v: u64 = 0;
    for c in digits.chars() {
        let Some(d) = c.to_digit(radix) else { break };
        match v.checked_mul(u64::from(radix)).and_then(|x| x.checked_add(u64::from(d))) {
            Some(n) => v = n,
            None => return u64::MAX,
        }
    }
    if neg { v.wrapping_neg() } else { v }
}

/// `strtoll(s, NULL, 0)`: like [`strtoull`] but saturating to the `i64` range.
fn strtoll(s: &str) -> i64 {
    let t = s.trim_start();
    let neg = t.starts_with('-');
    let magnitude = strtoull(t.trim_start_matches(['-', '+']));
    if neg {
        if magnitude > i64::MAX as u64 + 1 {
            i64::MIN
        } else {
            0i64.wrapping_sub_unsigned(magnitude)
        }
    } else {
        i64::try_from(magnitude).unwrap_or(i64::MAX)
    }
}

/// The value of a cast as libtraceevent computes it (`eval_type_str`): unsigned and signed
/// C types of 8, 16 and 32 bits are masked (never sign-extended), pointers, `long`, `u64`,
/// structs and unknown names keep the value; with `pointer`, the type must end in `*` and the
/// pointed-to type applies.
pub(crate) fn eval_cast(val: u64, ty: &str, pointer: bool) -> u64 {
    if ty.len() < 2 {
        return val;
    }
    if pointer {
        return match ty.strip_suffix(" *") {
            Some(base) => eval_cast(val, base, false),
            None if ty.ends_with('*') => eval_cast(val, &ty[..ty.len() - 1], false),
            None => val,
        };
    }
    if ty.ends_with('*') || ty.starts_with("struct") {
        return val;
    }
    let ty = ty.strip_prefix("unsigned ").unwrap_or(ty);
    match ty {
        "u8" | "s8" | "char" => val & 0xff,
        "u16" | "s16" | "short" => val & 0xffff,
        "u32" | "s32" | "int" => val & 0xffff_ffff,
        _ => val,
    }
}

/// The text libtraceevent keeps for a symbol table's value or name (`arg_eval`): an atom's
/// text, a cast's operand's, or an operator expression's value in decimal.
fn const_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Atom(a) => Some(a.to_string()),
        Expr::Cast(_, inner) => const_text(inner),
        Expr::Binary(..) | Expr::Unary(..) => const_num(e).map(|v| v.to_string()),
        _ => None,
    }
}

/// libtraceevent's constant evaluation of a symbol value (`arg_num_eval`): signed 64-bit,
/// atoms through `strtoll`, and only the operators it folds there.
fn const_num(e: &Expr) -> Option<i64> {
    Some(match e {
        Expr::Atom(a) => strtoll(a),
        Expr::Cast(ty, inner) => i64::from_ne_bytes(
            eval_cast(const_num(inner)?.cast_unsigned(), ty, false).to_ne_bytes(),
        ),
        Expr::Unary(UnOp::Neg, r) => 0i64.wrapping_sub(const_num(r)?),
        Expr::Binary(BinOp::Sub, l, r) if **l == Expr::Null => 0i64.wrapping_sub(const_num(r)?),
        Expr::Binary(BinOp::Add, l, r) if **l == Expr::Null => const_num(r)?,
        Expr::Unary(UnOp::Plus, r) => const_num(r)?,
        Expr::Unary(UnOp::BitNot, r) => !const_num(r)?,
        Expr::Binary(op, l, r) => {
            let (l, r) = (const_num(l)?, const_num(r)?);
            match op {
                BinOp::Or => i64::from(l != 0 || r != 0),
                BinOp::BitOr => l | r,
                BinOp::And => i64::from(l != 0 && r != 0),
                BinOp::BitAnd => l & r,
                BinOp::Lt => i64::from(l < r),
                BinOp::Shl => l.wrapping_shl(u32::try_from(r & 63).unwrap_or(0)),
                BinOp::Le => i64::from(l <= r),
                BinOp::Gt => i64::from(l > r),
                BinOp::Shr => l.wrapping_shr(u32::try_from(r & 63).unwrap_or(0)),
                BinOp::Ge => i64::from(l >= r),
                BinOp::Eq => i64::from(l == r),
                BinOp::Ne => i64::from(l != r),
                BinOp::Sub => l.wrapping_sub(r),
                BinOp::Add => l.wrapping_add(r),
                BinOp::Mul | BinOp::Div | BinOp::Rem | BinOp::BitXor => return None,
            }
        }
        _ => return None,
    })
}

/// Folds an operator whose operands are both atoms into one atom, as libtraceevent does for
/// each top-level argument (`consolidate_op_arg`, unsigned arithmetic printed signed).
fn fold_constants(e: Expr) -> Expr {
    match e {
        Expr::Binary(op, l, r) => {
            let (l, r) = (fold_constants(*l), fold_constants(*r));
            if let (Expr::Atom(a), Expr::Atom(b)) = (&l, &r) {
                let (x, y) = (strtoull(a), strtoull(b));
                let v = match op {
                    BinOp::Shr => Some(x.wrapping_shr(u32::try_from(y & 63).unwrap_or(0))),
                    BinOp::Ge => Some(u64::from(x >= y)),
                    BinOp::Gt => Some(u64::from(x > y)),
                    BinOp::Shl => Some(x.wrapping_shl(u32::try_from(y & 63).unwrap_or(0))),
                    BinOp::Le => Some(u64::from(x <= y)),
                    BinOp::Lt => Some(u64::from(x < y)),
                    BinOp::And => Some(u64::from(x != 0 && y != 0)),
                    BinOp::BitAnd => Some(x & y),
                    BinOp::Or => Some(u64::from(x != 0 || y != 0)),
                    BinOp::BitOr => Some(x | y),
                    BinOp::Sub => Some(x.wrapping_sub(y)),
                    BinOp::Add => Some(x.wrapping_add(y)),
                    BinOp::Mul => Some(x.wrapping_mul(y)),
                    BinOp::BitXor => Some(x ^ y),
                    BinOp::Div => x.checked_div(y),
                    BinOp::Rem => x.checked_rem(y),
                    BinOp::Eq => Some(u64::from(x == y)),
                    BinOp::Ne => Some(u64::from(x != y)),
                };
                if let Some(v) = v {
                    return Expr::Atom(v.cast_signed().to_string().into());
                }
            }
            Expr::Binary(op, Box::new(l), Box::new(r))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Parsed, PrintFmtError> {
        Grammar::new(&[], 8, text).print_fmt(text)
    }

    #[test]
    fn c_precedence_and_folding() {
        let p = parse(r#""%d", 1 + 2 * 3"#).unwrap();
        assert_eq!(p.args, vec![Expr::Atom("7".into())]);
        let p = parse(r#""%d %s", REC->a << 2 | 1, REC->rw ? "write" : "read""#).unwrap();
        let Expr::Binary(BinOp::BitOr, l, _) = &p.args[0] else { panic!("{:?}", p.args) };
        assert!(matches!(**l, Expr::Binary(BinOp::Shl, ..)));
        assert!(matches!(p.args[1], Expr::Cond(..)));
    }

    #[test]
    fn casts_strings_and_tables() {
        let p = parse(
            r#""a" "b%s", __print_symbolic((unsigned long)REC->x, { 1, "ONE" }, { (1 << 3), "EIGHT" }, )"#,
        )
        .unwrap();
        assert_eq!(p.format, "ab%s");
        let Expr::Symbolic(v, syms) = &p.args[0] else { panic!() };
        assert!(matches!(&**v, Expr::Cast(t, _) if &**t == "unsigned long"));
        assert_eq!(&*syms[1].value, "8");
        assert_eq!(&*syms[1].name, "EIGHT");
        let p = parse(r#""%s", __print_flags(REC->f & 3, "|", {0x1, "A"})"#).unwrap();
        assert!(matches!(&p.args[0], Expr::Flags(_, d, _) if &**d == "|"));
    }

    #[test]
    fn what_libtraceevent_refuses_is_refused() {
        assert_eq!(
            parse(r#""%u", jiffies_to_msecs(REC->t)"#),
            Err(PrintFmtError::UnknownFunction { name: "jiffies_to_msecs".into() })
        );
        assert!(parse(r#""%s", ({ int x; x; })"#).is_err());
        assert!(parse(r#""%s", __get_dynamic_array(nope)"#).is_err());
        assert!(parse("no string").is_err());
    }

    #[test]
    fn limits_hold_on_hostile_text() {
        // In a thread with half the stack a rayon worker has: refused, not overflowing.
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| {
                for n in [10_000usize, 200] {
                    let parens = format!("\"%d\", {}1{}", "(".repeat(n), ")".repeat(n));
                    assert_eq!(parse(&parens), Err(PrintFmtError::TooComplex));
                    let chain = format!("\"%d\", 1{}", " | REC->x".repeat(n));
                    assert_eq!(parse(&chain), Err(PrintFmtError::TooComplex));
                    let unary = format!("\"%d\", {}1", "~".repeat(n));
                    assert_eq!(parse(&unary), Err(PrintFmtError::TooComplex));
                    let cond = format!("\"%d\", {}1{}", "REC->a ? (".repeat(n), " : 2)".repeat(n));
                    assert_eq!(parse(&cond), Err(PrintFmtError::TooComplex));
                }
                // What kernels write is far below the limits.
                let parens = format!("\"%d\", {}REC->x{}", "(".repeat(30), ")".repeat(30));
                assert!(parse(&parens).is_ok());
                let chain = format!("\"%d\", REC->x{}", " | 0x1".repeat(90));
                assert!(parse(&chain).is_ok());
                let long = format!("\"%d\", 1{}", " + REC->x * 2".repeat(10_000));
                assert_eq!(parse(&long), Err(PrintFmtError::TooComplex));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn operators_combine_as_in_libtraceevent() {
        let field = |n: &str| Expr::Field(FieldRef { name: n.into(), index: None });
        let atom = |a: &str| Expr::Atom(a.into());
        let bin = |op, l, r| Expr::Binary(op, Box::new(l), Box::new(r));
        // timer_start's flags: the parenthesized `|` is rotated under the `&`.
        let p = parse(r#""%d", REC->f & (A | B)"#).unwrap();
        assert_eq!(
            p.args[0],
            bin(BinOp::BitOr, bin(BinOp::BitAnd, field("f"), atom("A")), atom("B"))
        );
        // Equal priorities group to the right.
        let p = parse(r#""%d", REC->a - REC->b - REC->c"#).unwrap();
        assert_eq!(p.args[0], bin(BinOp::Sub, field("a"), bin(BinOp::Sub, field("b"), field("c"))));
        // A looser operator after the ternary's false operand takes the whole ternary.
        let p = parse(r#""%d", REC->c ? REC->a : REC->b + 1"#).unwrap();
        assert!(
            matches!(&p.args[0], Expr::Binary(BinOp::Add, l, _) if matches!(**l, Expr::Cond(..)))
        );
        // Tighter operators still bind first, and parentheses on the left are kept.
        let p = parse(r#""%d", (REC->a + REC->b) * REC->c == REC->d"#).unwrap();
        let Expr::Binary(BinOp::Eq, l, _) = &p.args[0] else { panic!("{:?}", p.args) };
        let Expr::Binary(BinOp::Mul, ll, _) = &**l else { panic!("{l:?}") };
        assert!(matches!(**ll, Expr::Binary(BinOp::Add, ..)), "{ll:?}");
    }

    #[test]
    fn strtoull_is_glibcs() {
        assert_eq!(strtoull("0x1fUL"), 0x1f);
        assert_eq!(strtoull("010"), 8);
        assert_eq!(strtoull("-1"), u64::MAX);
        assert_eq!(strtoull("99999999999999999999999"), u64::MAX);
        assert_eq!(strtoull("HI_SOFTIRQ"), 0);
        assert_eq!(strtoll("0xffffffffffffffff"), i64::MAX);
    }
}
