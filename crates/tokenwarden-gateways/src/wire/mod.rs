//! The parts every gateway shares, a file each: one exchange with the issuer (`issuer`), JSON
//! reading with precise errors (`answer`), expiry from a JWT (`jwt`), and wall-clock times in
//! answers (`calendar`).

mod answer;
mod calendar;
mod issuer;
mod jwt;

pub(crate) use answer::{Answer, error_answer};
pub use calendar::local_time;
pub(crate) use issuer::{Issuer, UrlText};
pub use jwt::jwt_expiry;
pub(crate) use jwt::with_expiry;
