"""``python -m data_collator.synthetic --help``: writes the synthetic dataset (see [`main`])."""

from .dataset import main


if __name__ == "__main__":
    main()


__all__: list[str] = []
