"""Package references live in ``workerpool.packageref`` so clients can describe a step's packages
without loading the feeds; they are re-exported here beside them."""

from workerpool.packageref import BUILTIN_FEED, PACKAGE_ID, VERSION, PackageRef, check_feed_name

__all__ = ["BUILTIN_FEED", "PACKAGE_ID", "VERSION", "PackageRef", "check_feed_name"]
