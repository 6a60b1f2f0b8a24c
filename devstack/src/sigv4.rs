//! SigV4 canonical request / string-to-sign construction for verification (being built).
