"""The site restoration daemon: folder and HTTP intake, a crash-safe job journal, quarantine,
provenance, and a small reader (`RestoredIndex`) for the trainer."""
