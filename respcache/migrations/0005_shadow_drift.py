"""Shadow mode and drift alerts (issue 13): two policy fields, off and 20 points by default."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("respcache", "0004_budgets")]

    operations = [
        migrations.AddField(
            model_name="workload",
            name="shadow",
            field=models.BooleanField(
                default=False,
                help_text="Shadow: every cacheable call gets a fresh upstream answer, which is stored; the stats record whether the call would have hit and whether the answers agree.",
                verbose_name="shadow mode",
            ),
        ),
        migrations.AddField(
            model_name="workload",
            name="drift_threshold_points",
            field=models.PositiveSmallIntegerField(
                default=20,
                help_text="Alert when the hit rate of the last hour is more than this many percentage points below the 24 hours before it (100: never).",
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(100),
                ],
                verbose_name="drift threshold (points)",
            ),
        ),
    ]
