"""Two related tables, as in any real service: authors and their quotes."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Author(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    quotes: Mapped[list[Quote]] = relationship(back_populates="author", order_by="Quote.id")

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "quotes": len(self.quotes)}


class Quote(db.Model):  # type: ignore[name-defined,misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    likes: Mapped[int] = mapped_column(default=0)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    author: Mapped[Author] = relationship(back_populates="quotes")

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "text": self.text,
            "likes": self.likes,
            "author": {"id": self.author.id, "name": self.author.name},
        }


SEED: dict[str, list[str]] = {
    "Tim Peters": ["Errors should never pass silently.", "Explicit is better than implicit."],
    "Grace Hopper": ["It's easier to ask forgiveness than it is to get permission."],
    "Ada Lovelace": [
        "The Analytical Engine weaves algebraical patterns"
        " just as the Jacquard-loom weaves flowers and leaves."
    ],
}


def seed() -> None:
    """Insert the sample rows once; a restarted server finds them and adds nothing."""
    if db.session.scalar(db.select(Author.id).limit(1)) is not None:
        return
    for name, texts in SEED.items():
        db.session.add(Author(name=name, quotes=[Quote(text=t) for t in texts]))
    db.session.commit()
