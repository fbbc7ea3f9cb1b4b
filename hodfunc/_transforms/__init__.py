"""The public derivative transforms and the ``method=`` registry.

Modules: ``_derivative`` (``derivative``, ``derivatives``, ``partial``,
``directional_derivative``, ``laplacian``, ``derivative_tensor``), ``_jacobian`` (``jacobian``,
``hessian``, ``hvp``), ``_batched`` (``batched``), ``_method`` (the method names and the
``Engine`` protocol), ``_engines`` (the registry). The engines themselves are
``hodfunc._nested`` and ``hodfunc._taylor``.
"""
