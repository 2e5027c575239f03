"""Loaded by ``lf_ext.pth`` in every interpreter of the environment.

Installs a post-import hook so that lf_ext patches LLaMA-Factory modules right after they are
imported. Imports nothing heavy: a plain ``python -c pass`` stays as fast as before.
Set ``LF_EXT_DISABLE=1`` to turn lf_ext off in a process and its children.
"""

from lf_ext.activation import is_disabled

if not is_disabled():
    from lf_ext._import_hook import install

    install()
