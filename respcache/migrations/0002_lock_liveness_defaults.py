"""The stampede lock became a renewed liveness window (issue: faults).

``lock_ttl`` 60 -> 10 s: a holder now renews its lock while its upstream call runs, so the TTL
only bounds how long a dead holder blocks its waiters. ``wait_max`` 30 -> 310 s: waiters wait
while the holder lives, up to the upstream timeout (300 s) plus one lock TTL. Workloads still on
both old defaults move to the new ones; a workload with either value set by hand keeps both.
"""

from typing import Any

import django.core.validators
from django.db import migrations, models

OLD = {"lock_ttl": 60.0, "wait_max": 30.0}
NEW = {"lock_ttl": 10.0, "wait_max": 310.0}


def forwards(apps: Any, schema_editor: Any) -> None:
    apps.get_model("respcache", "Workload").objects.filter(**OLD).update(**NEW)


def backwards(apps: Any, schema_editor: Any) -> None:
    apps.get_model("respcache", "Workload").objects.filter(**NEW).update(**OLD)


class Migration(migrations.Migration):
    dependencies = [("respcache", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="workload",
            name="lock_ttl",
            field=models.FloatField(
                default=10.0,
                help_text="Liveness window of the stampede lock: its holder renews it while its upstream call runs; if the holder dies, a waiter takes over within this time.",
                validators=[django.core.validators.MinValueValidator(0.01)],
                verbose_name="lock TTL (seconds)",
            ),
        ),
        migrations.AlterField(
            model_name="workload",
            name="wait_max",
            field=models.FloatField(
                default=310.0,
                help_text="The longest a caller waits for a live holder's answer before calling upstream itself. The default covers the upstream timeout (300 s) plus one lock TTL.",
                validators=[django.core.validators.MinValueValidator(0.0)],
                verbose_name="wait max (seconds)",
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
