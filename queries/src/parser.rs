//! Recursive-descent parser from tokens to the condition AST, with the Edge grammar's precedence.
//!
//! Precedence, high to low: unary `-`/`NOT` > `* / %` > `+ - ||` > `< <= > >=` > `= != <>` > `AND` >
//! `OR` > `??`; binary operators associate to the left. As in the ANTLR grammar, `NOT` binds tighter
//! than comparisons, so `NOT a = b` means `(NOT a) = b`; the type checker explains the fix.

use crate::error::{Diagnostic, Error, Result};
use crate::lexer::{Token, TokenKind, tokenize};

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BinaryOp {
    Mul,
    Div,
    Rem,
    Add,
    Sub,
    Concat,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Eq,
    NotEq,
    And,
    Or,
    Coalesce,
}

impl BinaryOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            Self::Mul => "*",
            Self::Div => "/",
            Self::Rem => "%",
            Self::Add => "+",
            Self::Sub => "-",
            Self::Concat => "||",
            Self::Lt => "<",
            Self::LtEq => "<=",
            Self::Gt => ">",
            Self::GtEq => ">=",
            Self::Eq => "=",
            Self::NotEq => "!=",
            Self::And => "AND",
            Self::Or => "OR",
            Self::Coalesce => "??",
        }
    }
}

/// A literal constant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Bool(bool),
    Number(f64),
    Str(String),
    Null,
    Undefined,
}

/// How a name was written: `name`, `$name` or `{$name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameForm {
    /// `name`: an application property.
    App,
    /// `$name`: application property named `$name` if present, else the system property.
    Dollar,
    /// `{$name}`: system property (or body/twin query) only.
    Braced,
}

/// An expression node with its byte span in the source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expr {
    pub(crate) kind: ExprKind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExprKind {
    Literal(Literal),
    /// A property reference; for `$` forms the name excludes the `$`.
    Name {
        form: NameForm,
        name: String,
    },
    Call {
        name: String,
        args: Vec<Expr>,
    },
    Negate(Box<Expr>),
    Not(Box<Expr>),
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
}

/// Parses a condition; `Ok(None)` for an empty (whitespace/comment only) condition.
pub(crate) fn parse(source: &str) -> Result<Option<Expr>> {
    let tokens = tokenize(source)?;
    let mut parser = Parser {
        source,
        tokens,
        pos: 0,
    };
    if parser.peek().kind == TokenKind::Eof {
        return Ok(None);
    }
    let expr = parser.expr(0)?;
    let next = parser.peek();
    if next.kind != TokenKind::Eof {
        return Err(parser.error_at(next, "expected an operator or the end of the condition"));
    }
    Ok(Some(expr))
}

struct Parser<'s> {
    source: &'s str,
    tokens: Vec<Token>,
    pos: usize,
}

/// Binding power of each binary operator (higher binds tighter).
fn binary_op(kind: &TokenKind) -> Option<(BinaryOp, u8)> {
    Some(match kind {
        TokenKind::Coalesce => (BinaryOp::Coalesce, 1),
        TokenKind::Or => (BinaryOp::Or, 2),
        TokenKind::And => (BinaryOp::And, 3),
        TokenKind::Eq => (BinaryOp::Eq, 4),
        TokenKind::NotEq => (BinaryOp::NotEq, 4),
        TokenKind::Lt => (BinaryOp::Lt, 5),
        TokenKind::LtEq => (BinaryOp::LtEq, 5),
        TokenKind::Gt => (BinaryOp::Gt, 5),
        TokenKind::GtEq => (BinaryOp::GtEq, 5),
        TokenKind::Plus => (BinaryOp::Add, 6),
        TokenKind::Minus => (BinaryOp::Sub, 6),
        TokenKind::Concat => (BinaryOp::Concat, 6),
        TokenKind::Star => (BinaryOp::Mul, 7),
        TokenKind::Slash => (BinaryOp::Div, 7),
        TokenKind::Percent => (BinaryOp::Rem, 7),
        _ => return None,
    })
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        token
    }

    fn error_at(&self, token: &Token, message: &str) -> Error {
        let found = if token.kind == TokenKind::Eof {
            "end of condition".to_owned()
        } else {
            format!("`{}`", &self.source[token.start..token.end])
        };
        let mut diagnostic = Diagnostic::at(
            self.source,
            token.start,
            token.end,
            format!("{message}, found {found}"),
        );
        if let TokenKind::Number(n) = token.kind
            && n < 0.0
            && self.pos > 0
        {
            diagnostic = diagnostic.with_suggestion(
                "a `-` glued to a number is part of it: put spaces around binary `-` (`a - 1`)",
            );
        }
        Error::Syntax(diagnostic)
    }

    fn expect(&mut self, kind: &TokenKind, what: &str) -> Result<Token> {
        if &self.peek().kind == kind {
            Ok(self.next())
        } else {
            Err(self.error_at(self.peek(), &format!("expected {what}")))
        }
    }

    fn expr(&mut self, min_power: u8) -> Result<Expr> {
        let mut left = self.unary()?;
        while let Some((op, power)) = binary_op(&self.peek().kind) {
            if power <= min_power {
                break;
            }
            self.next();
            let right = self.expr(power)?;
            left = Expr {
                start: left.start,
                end: right.end,
                kind: ExprKind::Binary {
                    op,
                    left: Box::new(left),
                    right: Box::new(right),
                },
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr> {
        let token = self.peek().clone();
        let wrap = match token.kind {
            TokenKind::Minus => ExprKind::Negate,
            TokenKind::Not => ExprKind::Not,
            _ => return self.primary(),
        };
        self.next();
        let operand = self.unary()?;
        Ok(Expr {
            start: token.start,
            end: operand.end,
            kind: wrap(Box::new(operand)),
        })
    }

    fn primary(&mut self) -> Result<Expr> {
        let token = self.next();
        let literal = |l| Ok(ExprKind::Literal(l));
        let kind = match token.kind {
            TokenKind::True => literal(Literal::Bool(true)),
            TokenKind::False => literal(Literal::Bool(false)),
            TokenKind::Null => literal(Literal::Null),
            TokenKind::Undefined => literal(Literal::Undefined),
            TokenKind::Number(n) => literal(Literal::Number(n)),
            TokenKind::Str(ref s) => literal(Literal::Str(s.clone())),
            TokenKind::SysProp(ref name) => Ok(ExprKind::Name {
                form: NameForm::Dollar,
                name: name.clone(),
            }),
            TokenKind::LParen => {
                let inner = self.expr(0)?;
                let close = self.expect(&TokenKind::RParen, "`)`")?;
                return Ok(Expr {
                    start: token.start,
                    end: close.end,
                    kind: inner.kind,
                });
            }
            TokenKind::LBrace => {
                let name_token = self.next();
                let TokenKind::SysProp(name) = name_token.kind else {
                    return Err(Error::Syntax(
                        Diagnostic::at(
                            self.source,
                            name_token.start,
                            name_token.end,
                            "expected a `$name` inside `{ }`",
                        )
                        .with_suggestion("`{$name}` forces a system property, e.g. {$contentType}"),
                    ));
                };
                let close = self.expect(&TokenKind::RBrace, "`}`")?;
                return Ok(Expr {
                    start: token.start,
                    end: close.end,
                    kind: ExprKind::Name {
                        form: NameForm::Braced,
                        name,
                    },
                });
            }
            TokenKind::Ident(ref name) => {
                if self.peek().kind == TokenKind::LParen {
                    self.next();
                    let mut args = Vec::new();
                    if self.peek().kind != TokenKind::RParen {
                        loop {
                            args.push(self.expr(0)?);
                            if self.peek().kind == TokenKind::Comma {
                                self.next();
                            } else {
                                break;
                            }
                        }
                    }
                    let close = self.expect(&TokenKind::RParen, "`,` or `)`")?;
                    return Ok(Expr {
                        start: token.start,
                        end: close.end,
                        kind: ExprKind::Call {
                            name: name.clone(),
                            args,
                        },
                    });
                }
                Ok(ExprKind::Name {
                    form: NameForm::App,
                    name: name.clone(),
                })
            }
            _ => Err(self.error_at(&token, "expected a value, a name, `(` or a function call")),
        }?;
        Ok(Expr {
            start: token.start,
            end: token.end,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders an expression fully parenthesised, to check precedence.
    fn render(expr: &Expr) -> String {
        match &expr.kind {
            ExprKind::Literal(l) => format!("{l:?}"),
            ExprKind::Name { form, name } => match form {
                NameForm::App => name.clone(),
                NameForm::Dollar => format!("${name}"),
                NameForm::Braced => format!("{{${name}}}"),
            },
            ExprKind::Call { name, args } => {
                let args: Vec<String> = args.iter().map(render).collect();
                format!("{name}({})", args.join(", "))
            }
            ExprKind::Negate(e) => format!("(-{})", render(e)),
            ExprKind::Not(e) => format!("(NOT {})", render(e)),
            ExprKind::Binary { op, left, right } => {
                format!("({} {} {})", render(left), op.symbol(), render(right))
            }
        }
    }

    #[test]
    fn precedence_follows_the_edge_grammar() {
        let cases = [
            ("a OR b AND c", "(a OR (b AND c))"),
            ("a ?? b OR c", "(a ?? (b OR c))"),
            ("a = b AND c <> d", "((a = b) AND (c != d))"),
            ("x < 1 = y > 2", "((x < Number(1.0)) = (y > Number(2.0)))"),
            ("1 + 2 * 3", "(Number(1.0) + (Number(2.0) * Number(3.0)))"),
            ("a || b + c", "((a || b) + c)"),
            ("NOT a = b", "((NOT a) = b)"),
            ("- x * 2", "((-x) * Number(2.0))"),
            ("f(a, g(), (b))", "f(a, g(), b)"),
            ("{$x} AND $y", "({$x} AND $y)"),
            ("10 - 2 - 3", "((Number(10.0) - Number(2.0)) - Number(3.0))"),
        ];
        for (source, expected) in cases {
            let expr = parse(source).unwrap().unwrap();
            assert_eq!(render(&expr), expected, "{source}");
        }
    }

    #[test]
    fn empty_conditions_parse_to_nothing() {
        for source in ["", "   ", "/* nothing */", "\n\t"] {
            assert_eq!(parse(source).unwrap(), None, "{source:?}");
        }
    }

    #[test]
    fn syntax_errors_are_positioned() {
        let cases = [
            ("a = ", "line 1, column 5: expected a value"),
            ("(a = 1", "line 1, column 7: expected `)`"),
            (
                "a = 1 b",
                "line 1, column 7: expected an operator or the end",
            ),
            ("5-3", "line 1, column 2: expected an operator or the end"),
            ("f(a b)", "line 1, column 5: expected `,` or `)`"),
            ("{x}", "line 1, column 2: expected a `$name` inside"),
        ];
        for (source, expected) in cases {
            let error = parse(source).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{source}: {error}");
        }
    }
}
