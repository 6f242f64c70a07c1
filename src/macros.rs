//! Small macros shared by the contexts.

/// GoCD's vocabulary enums travel as their exact names (`LostContact`, `Completed`): `as_str`,
/// `Display`, and a case-insensitive `FromStr` whose error lists the accepted names.
macro_rules! text_enum {
    ($ty:ident { $($variant:ident),+ }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => stringify!($variant)),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
        /// Case-insensitive, as GoCD accepts `enabled` as well as `Enabled`.
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                $(if s.eq_ignore_ascii_case(stringify!($variant)) { return Ok($ty::$variant); })+
                Err(format!(
                    "{s:?} is not one of {}",
                    [$(stringify!($variant)),+].join(", ")
                ))
            }
        }
    };
}
