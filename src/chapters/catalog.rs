//! The catalog: one line per chapter, naming the chapter's definition in its
//! own folder. Adding a chapter is adding its folder under `labs/`, its book
//! page, its e2e test and one line here.

use super::Chapter;

macro_rules! catalog {
    ($($path:literal => $module:ident),* $(,)?) => {
        $(
            #[path = $path]
            pub mod $module;
        )*

        static CATALOG: &[&Chapter] = &[$(&$module::CHAPTER),*];
    };
}

catalog! {
    "../../labs/01-identity/chapter.rs" => identity,
    "../../labs/02-token-mount/chapter.rs" => token_mount,
    "../../labs/03-rolebinding/chapter.rs" => rolebinding,
    "../../labs/04-default-sa/chapter.rs" => default_sa,
    "../../labs/05-automount/chapter.rs" => automount,
    "../../labs/06-token-request/chapter.rs" => token_request,
    "../../labs/07-legacy-tokens/chapter.rs" => legacy_tokens,
    "../../labs/08-audit/chapter.rs" => audit,
}

/// Every chapter, in order.
pub fn catalog() -> &'static [&'static Chapter] {
    CATALOG
}
