"""evsed hardware abstraction layer (import package `hal`)."""
