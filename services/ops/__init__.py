"""Operations: `factoryline status`, `halt`, `resume` and `flatten` (one screen of health, and the
stop buttons a person reaches for)."""
