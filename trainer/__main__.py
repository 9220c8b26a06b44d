"""`python -m trainer ...` is the same program as `cliplab ...` (the launcher and torchrun use this form)."""

from trainer.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
