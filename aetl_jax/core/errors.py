"""How a one-line error quotes the exception a library raised underneath it."""

from __future__ import annotations


def first_line(error: BaseException, limit: int = 300) -> str:
  """The first line of ``error``'s text (leading blank lines skipped), cut to ``limit``
  characters; the exception's type name when it has no text."""
  text = str(error).strip()
  return text.splitlines()[0][:limit] if text else type(error).__name__


def described(error: BaseException, limit: int = 300) -> str:
  """``'TypeName: first line'``, or ``'TypeName'`` alone when the exception has no text."""
  text = str(error).strip()
  name = type(error).__name__
  return f"{name}: {text.splitlines()[0][:limit]}" if text else name
